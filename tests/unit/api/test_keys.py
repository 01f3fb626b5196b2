"""API key format, offline checksum validation, keyed hashing and the pepper file."""

from __future__ import annotations

import re
import stat
import zlib
from pathlib import Path

import pytest

from hutch.models.api import Mode
from hutch.services import keys
from hutch.services.clock import FakeClock


def test_key_format_is_prefix_random_checksum() -> None:
    k = keys.generate(Mode.live)
    assert re.fullmatch(r"sk_live_[0-9A-Za-z]{32}[0-9A-Za-z]{6}", k)
    assert keys.generate(Mode.test).startswith("sk_test_")
    body, check = k[:-6], k[-6:]
    # The checksum is the CRC32 of everything before it, in base62 (offline-checkable).
    n = 0
    for ch in check:
        n = n * 62 + keys.BASE62.index(ch)
    assert n == zlib.crc32(body.encode())


def test_keys_are_random() -> None:
    assert len({keys.generate(Mode.live) for _ in range(200)}) == 200


def test_is_well_formed_accepts_real_keys_and_rejects_near_misses() -> None:
    k = keys.generate(Mode.live)
    assert keys.is_well_formed(k)
    flipped = k[:20] + ("A" if k[20] != "A" else "B") + k[21:]
    assert not keys.is_well_formed(flipped), "a one-character typo must fail the checksum"
    assert not keys.is_well_formed(k[:-1])
    assert not keys.is_well_formed("sk_prod_" + k[8:])
    assert not keys.is_well_formed(k.replace("sk_live_", "sk_live-"))
    assert not keys.is_well_formed("sk_live_" + "a" * 20)  # too short
    assert not keys.is_well_formed(k + "!")
    assert not keys.is_well_formed("")
    short = "sk_test_" + "x" * 30
    assert keys.is_well_formed(short + keys.checksum(short)), "30 random characters is the floor"
    shorter = "sk_test_" + "x" * 29
    assert not keys.is_well_formed(shorter + keys.checksum(shorter))


def test_hash_is_keyed_by_the_pepper() -> None:
    k = keys.generate(Mode.live)
    a = keys.KeyService(b"a" * 32, FakeClock())
    b = keys.KeyService(b"b" * 32, FakeClock())
    assert a.hash(k) == a.hash(k)
    assert a.hash(k) != b.hash(k)
    assert len(a.hash(k)) == 64 and k not in a.hash(k)


def test_pepper_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    p1 = keys.load_pepper(tmp_path)
    mode = stat.S_IMODE((tmp_path / "pepper").stat().st_mode)
    assert mode == 0o600
    assert len(p1) == 32
    assert keys.load_pepper(tmp_path) == p1, "restarts must reuse the pepper"
    assert keys.load_pepper(tmp_path, "configured") == b"configured"


def test_weak_pepper_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pepper").write_bytes(b"short")
    with pytest.raises(RuntimeError, match="weak pepper"):
        keys.load_pepper(tmp_path)
