"""Per-sandbox disk quota: a sparse ext4 image, cloned from a pre-formatted image per size.

This host's kernel may lack project quotas (ext4 needs QFMT_V2, xfs needs XFS_QUOTA), so each
sandbox's writable layer is its own small file system on a loop device: writes past the size
fail with ENOSPC inside the sandbox and never touch the rest of the host disk. Formatting takes
tens of milliseconds, so each size is formatted once and new disks are sparse copies of it
(only the few MiB of metadata are copied).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

MKFS = [
    "mkfs.ext4",
    "-q",
    "-F",
    "-b",
    "4096",
    "-m",
    "0",
    # No journal: the layer is ephemeral, and a journal costs a kernel thread per mount.
    "-O",
    "^has_journal",
    "-E",
    # Inode tables are left unwritten: the image is sparse, so they read as zeros, and the
    # file systems are mounted with noinit_itable so no kernel thread zeroes them later. This
    # keeps a 4 GiB image at ~2 MiB of metadata to copy per sandbox instead of ~67 MiB.
    "lazy_itable_init=1,nodiscard",
]


class DiskImages:
    """Makes and clones sparse ext4 images."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def golden(self, size_mb: int) -> Path:
        """The pre-formatted image for `size_mb`, formatted on first use."""
        path = self.cache_dir / f"ext4-v2-{size_mb}m.img"
        if path.exists():
            return path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                return path
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    f.truncate(size_mb * 1024 * 1024)
                proc = subprocess.run(
                    [*MKFS, str(tmp)], capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    raise OSError(f"mkfs.ext4 failed: {proc.stderr.strip()}")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def clone(self, size_mb: int, dest: Path) -> None:
        """Create `dest` as a sparse copy of the golden image for `size_mb`."""
        src = self.golden(size_mb)
        sparse_copy(src, dest)


def sparse_copy(src: Path, dest: Path) -> None:
    """Copy only the data extents of `src` into a new sparse file `dest` of the same size."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd_in).st_size
        fd_out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd_out, size)
            pos = 0
            while pos < size:
                try:
                    data = os.lseek(fd_in, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: no data past pos
                    break
                hole = os.lseek(fd_in, data, os.SEEK_HOLE)
                off = data
                while off < hole:
                    n = os.copy_file_range(fd_in, fd_out, hole - off, off, off)
                    if n == 0:
                        break
                    off += n
                pos = hole
        finally:
            os.close(fd_out)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd_in)
