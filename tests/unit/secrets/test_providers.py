"""One contract for every KEK provider: the local key file, Vault transit (against a fake
transit server on loopback, through hvac) and AWS KMS (against moto's server, through boto3)."""

from __future__ import annotations

import os
import secrets
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.services.secrets.envelope import context, open_sealed, seal
from hutch.services.secrets.kek import KekError, KekProvider, LocalKeyFile
from hutch.services.secrets.kms import AwsKms
from hutch.services.secrets.providers import build_provider
from hutch.services.secrets.vault import VaultTransit
from tests.unit.secrets.fake_vault import FakeVault

CTX = {"team": "team_a", "project": "prj_a", "secret": "TOKEN", "version": "1"}
OTHER = {**CTX, "project": "prj_b"}


@dataclass
class Kit:
    """A provider, and how to move it to a new KEK (returns the provider to use afterwards)."""

    provider: KekProvider
    rotate: Callable[[], KekProvider]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def kms_url() -> Iterator[str]:
    """moto's KMS on a loopback port, with dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _kms_key(url: str) -> str:
    import boto3

    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=url)
    return str(kms.create_key(Description="hutch test KEK")["KeyMetadata"]["KeyId"])


@pytest.fixture(params=["local", "vault", "kms"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    """Each provider in turn."""
    if request.param == "local":
        p = LocalKeyFile(tmp_path / "kek.json")
        yield Kit(p, lambda: (p.rotate(), p)[1])
    elif request.param == "vault":
        with FakeVault() as v:
            vp = VaultTransit(v.url, v.token)
            yield Kit(vp, lambda: (vp.rotate(), vp)[1])
    else:
        url = request.getfixturevalue("kms_url")
        kp = AwsKms(_kms_key(url), region="us-east-1", endpoint_url=url)
        # KMS rotation from Hutch's side: point at a new key, then rewrap.
        yield Kit(kp, lambda: AwsKms(_kms_key(url), region="us-east-1", endpoint_url=url))


def test_wrap_unwrap_round_trip(kit: Kit) -> None:
    dk = secrets.token_bytes(32)
    kek_id, wrapped = kit.provider.wrap(dk, CTX)
    assert kek_id == kit.provider.current_kek_id()
    assert dk not in wrapped
    assert kit.provider.unwrap(kek_id, wrapped, CTX) == dk


def test_a_wrapped_key_is_bound_to_its_context(kit: Kit) -> None:
    kek_id, wrapped = kit.provider.wrap(secrets.token_bytes(32), CTX)
    with pytest.raises(KekError):
        kit.provider.unwrap(kek_id, wrapped, OTHER)
    with pytest.raises(KekError):
        kit.provider.unwrap(kek_id, wrapped, {**CTX, "secret": "OTHER"})


def test_a_tampered_wrapped_key_fails(kit: Kit) -> None:
    kek_id, wrapped = kit.provider.wrap(secrets.token_bytes(32), CTX)
    bad = bytearray(wrapped)
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(KekError):
        kit.provider.unwrap(kek_id, bytes(bad), CTX)


def test_rotation_keeps_old_keys_and_rewrap_moves_them(kit: Kit) -> None:
    dk = secrets.token_bytes(32)
    old_id, old = kit.provider.wrap(dk, CTX)
    provider = kit.rotate()
    new_id = provider.current_kek_id()
    assert new_id != old_id
    assert provider.unwrap(old_id, old, CTX) == dk  # old wraps still open after rotation
    kek_id, rewrapped = provider.rewrap(old_id, old, CTX)
    assert kek_id == new_id and rewrapped != old
    assert provider.unwrap(kek_id, rewrapped, CTX) == dk
    assert provider.wrap(dk, CTX)[0] == new_id
    with pytest.raises(KekError):
        provider.rewrap(old_id, old, OTHER)


def test_envelope_over_the_provider(kit: Kit) -> None:
    marker = b"envelope-marker-" + secrets.token_hex(8).encode()
    ctx = context("team_a", "prj_a", "TOKEN", 1)
    sealed = seal(kit.provider, marker, ctx)
    assert marker not in sealed.ciphertext + sealed.wrapped_key
    assert open_sealed(kit.provider, sealed, ctx) == marker
    for moved in (
        context("team_a", "prj_b", "TOKEN", 1),
        context("team_b", "prj_a", "TOKEN", 1),
        context("team_a", "prj_a", "OTHER", 1),
        context("team_a", "prj_a", "TOKEN", 2),
    ):
        with pytest.raises(KekError):
            open_sealed(kit.provider, sealed, moved)


def test_unreachable_providers_raise_kek_errors() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(KekError) as e:
        VaultTransit(dead, "token", timeout=2).wrap(b"k" * 32, CTX)
    assert "token" not in str(e.value)
    with pytest.raises(KekError):
        AwsKms("alias/none", region="us-east-1", endpoint_url=dead).wrap(b"k" * 32, CTX)


def test_vault_refuses_a_wrong_token() -> None:
    with FakeVault() as v, pytest.raises(KekError):
        VaultTransit(v.url, "s.wrong").wrap(b"k" * 32, CTX)


def test_local_key_file_is_created_private_and_rotates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    p = build_provider("local", data_dir=tmp_path)
    assert isinstance(p, LocalKeyFile) and p.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kek_id, wrapped = p.wrap(b"k" * 32, CTX)
    p.rotate()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another process (a fresh reader of the same file) sees both versions.
    again = LocalKeyFile(path)
    assert again.current_kek_id() == "local:v2"
    assert again.unwrap(kek_id, wrapped, CTX) == b"k" * 32
    # A stale reader learns about the new version from the file.
    stale = LocalKeyFile(path)
    p.rotate()
    v3_id, v3 = p.wrap(b"k" * 32, CTX)
    assert stale.unwrap(v3_id, v3, CTX) == b"k" * 32


def test_local_key_file_refuses_loose_permissions(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    LocalKeyFile(path)
    path.chmod(0o644)
    with pytest.raises(KekError, match="chmod 600"):
        LocalKeyFile(path)


def test_provider_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HUTCH_VAULT_ADDR"):
        build_provider("vault", data_dir=tmp_path)
    with pytest.raises(ValueError, match="HUTCH_KMS_KEY_ID"):
        build_provider("kms", data_dir=tmp_path)
