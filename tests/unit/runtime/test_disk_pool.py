"""Disk images made ahead of creates: flushed copies of the golden image, renamed into place."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from hutch.runtime.namespace.disk import DiskImages

SIZE_MB = 64


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ready(disks: DiskImages) -> list[Path]:
    return sorted((disks.cache_dir / "ready" / f"ext4-v3-{SIZE_MB}m").glob("*.img"))


def wait_ready(disks: DiskImages, n: int) -> list[Path]:
    deadline = time.monotonic() + 30
    while len(found := ready(disks)) < n or disks._filling:
        assert time.monotonic() < deadline, f"{len(found)} of {n} ready copies"
        time.sleep(0.01)
    return found


def test_a_create_takes_a_ready_copy_and_the_pool_is_topped_up(tmp_path: Path) -> None:
    disks = DiskImages(tmp_path / "disks", ready={SIZE_MB: 2})
    first = tmp_path / "a.img"
    disks.clone(SIZE_MB, first)  # nothing ready yet: copied on the spot
    golden = digest(disks.golden(SIZE_MB))
    assert digest(first) == golden
    pool = wait_ready(disks, 2)
    assert len(pool) == 2
    second = tmp_path / "b.img"
    disks.clone(SIZE_MB, second)
    assert digest(second) == golden
    left = ready(disks)
    assert len(set(pool) - set(left)) == 1, "one ready copy was taken (renamed into place)"
    assert second.stat().st_size == SIZE_MB * 1024 * 1024
    assert second.stat().st_blocks * 512 < SIZE_MB * 1024 * 1024, "still sparse"
    wait_ready(disks, 2)


def test_copies_from_an_earlier_run_are_used_and_unfinished_ones_removed(tmp_path: Path) -> None:
    before = DiskImages(tmp_path / "disks", ready={SIZE_MB: 1})
    before.clone(SIZE_MB, tmp_path / "a.img")
    (kept,) = wait_ready(before, 1)
    unfinished = kept.parent / "123-4-5.tmp"
    unfinished.write_bytes(b"partial")
    after = DiskImages(tmp_path / "disks", ready={SIZE_MB: 1})
    dest = tmp_path / "b.img"
    after.clone(SIZE_MB, dest)
    assert not kept.exists(), "the earlier run's copy was renamed into place"
    assert not unfinished.exists()
    assert digest(dest) == digest(after.golden(SIZE_MB))
    wait_ready(after, 1)


def test_only_the_named_sizes_are_made_ahead(tmp_path: Path) -> None:
    """A caller choosing other sizes gets copies made on the spot: the pool cannot grow."""
    disks = DiskImages(tmp_path / "disks", ready={SIZE_MB * 2: 2})
    disks.clone(SIZE_MB, tmp_path / "a.img")
    time.sleep(0.2)
    assert ready(disks) == [] and not (tmp_path / "disks" / "ready").exists()
    assert digest(tmp_path / "a.img") == digest(disks.golden(SIZE_MB))


def test_a_disk_copies_only_a_little_metadata(tmp_path: Path) -> None:
    """A 4 GiB sandbox disk is a sparse file holding a few hundred KiB of ext4 metadata: that
    is what every create copies (no resize inode and its 2 MiB of reserved blocks)."""
    golden = DiskImages(tmp_path / "disks").golden(4096)
    assert golden.stat().st_size == 4096 * 1024 * 1024
    assert golden.stat().st_blocks * 512 < 512 * 1024
