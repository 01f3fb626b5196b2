"""Per-sandbox disk quota: a sparse ext4 image, cloned from a pre-formatted image per size.

This host's kernel may lack project quotas (ext4 needs QFMT_V2, xfs needs XFS_QUOTA), so each
sandbox's writable layer is its own small file system on a loop device: writes past the size
fail with ENOSPC inside the sandbox and never touch the rest of the host disk. Formatting takes
tens of milliseconds, so each size is formatted once and new disks are sparse copies of it
(only the few hundred KiB of metadata are copied).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import subprocess
import threading
from pathlib import Path

MKFS = [
    "mkfs.ext4",
    "-q",
    "-F",
    "-b",
    "4096",
    "-m",
    "0",
    # No journal: the layer is ephemeral, and a journal costs a kernel thread per mount. No
    # resize inode: its 511 reserved descriptor blocks were 2 MiB of the 2.2 MiB copied per
    # sandbox, for online growth no sandbox disk ever does.
    "-O",
    "^has_journal,^resize_inode",
    "-E",
    # Inode tables are left unwritten: the image is sparse, so they read as zeros, and the
    # file systems are mounted with noinit_itable so no kernel thread zeroes them later. This
    # keeps a 4 GiB image at ~2 MiB of metadata to copy per sandbox instead of ~67 MiB.
    "lazy_itable_init=1,nodiscard",
]


class DiskImages:
    """Makes and clones sparse ext4 images.

    `ready` names sizes (the default one, in practice) of which a few copies are made ahead of
    time, off the create path, and flushed to disk there: the loop device that mounts a disk
    with direct I/O first flushes whatever of its file is still in the page cache, which for a
    just-made copy is all of it (about 2 ms per create). A create then only renames a ready copy
    into place. Other sizes are copied on the spot, so no caller can make the pool grow.
    """

    def __init__(self, cache_dir: Path, ready: dict[int, int] | None = None) -> None:
        self.cache_dir = cache_dir
        self._keep = dict(ready or {})  # size in MiB -> how many copies to keep ready
        self._lock = threading.Lock()
        self._ready: dict[int, list[Path]] = {}  # size -> ready copies, found on first use
        self._filling: set[int] = set()

    def _name(self, size_mb: int) -> str:
        return f"ext4-v3-{size_mb}m"

    def golden(self, size_mb: int) -> Path:
        """The pre-formatted image for `size_mb`, formatted on first use."""
        path = self.cache_dir / f"{self._name(size_mb)}.img"
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
        """Create `dest` as a sparse copy of the golden image for `size_mb` (a ready one if
        there is one; the pool is then topped up in the background)."""
        if self._keep.get(size_mb, 0) <= 0:
            sparse_copy(self.golden(size_mb), dest)
            return
        ready = self._take(size_mb)
        try:
            if ready is not None:
                try:
                    os.rename(ready, dest)  # dest is new: nothing is replaced
                    return
                except OSError as e:
                    ready.unlink(missing_ok=True)
                    if e.errno == errno.EXDEV:  # the pool is on another file system: no pool
                        self._keep[size_mb] = 0
                        self._drop(size_mb)
            sparse_copy(self.golden(size_mb), dest)
        finally:
            self._refill_later(size_mb)

    def _ready_dir(self, size_mb: int) -> Path:
        return self.cache_dir / "ready" / self._name(size_mb)

    def _take(self, size_mb: int) -> Path | None:
        with self._lock:
            if size_mb not in self._ready:
                self._ready[size_mb] = self._found(size_mb)
            ready = self._ready[size_mb]
            return ready.pop() if ready else None

    def _found(self, size_mb: int) -> list[Path]:
        """Copies left by an earlier run (each was flushed before it got its name); unfinished
        ones are removed. An unreadable pool is an empty one."""
        found = []
        with contextlib.suppress(OSError):
            for e in os.scandir(self._ready_dir(size_mb)):
                if e.name.endswith(".img") and e.is_file(follow_symlinks=False):
                    found.append(Path(e.path))
                else:
                    with contextlib.suppress(OSError):
                        Path(e.path).unlink()
        return found

    def _drop(self, size_mb: int) -> None:
        with self._lock:
            left, self._ready[size_mb] = self._ready.get(size_mb, []), []
        for path in left:
            path.unlink(missing_ok=True)

    def _refill_later(self, size_mb: int) -> None:
        with self._lock:
            if size_mb in self._filling or len(self._ready[size_mb]) >= self._keep[size_mb]:
                return
            self._filling.add(size_mb)
        threading.Thread(
            target=self._refill, args=(size_mb,), name=f"disk-pool-{size_mb}m", daemon=True
        ).start()

    def _refill(self, size_mb: int) -> None:
        try:
            d = self._ready_dir(size_mb)
            d.mkdir(parents=True, exist_ok=True)
            golden = self.golden(size_mb)
            while True:
                with self._lock:
                    if len(self._ready[size_mb]) >= self._keep[size_mb]:
                        return
                tmp = d / f"{secrets.token_hex(8)}.tmp"  # never the name of a ready copy
                path = tmp.with_suffix(".img")
                sparse_copy(golden, tmp, flush=True)
                os.rename(tmp, path)
                with self._lock:
                    self._ready[size_mb].append(path)
        except OSError:
            pass  # creates copy on the spot, as without a pool
        finally:
            with self._lock:
                self._filling.discard(size_mb)


def sparse_copy(src: Path, dest: Path, *, flush: bool = False) -> None:
    """Copy only the data extents of `src` into a new sparse file `dest` of the same size
    (and, with `flush`, write it to disk before returning)."""
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
            if flush:
                os.fdatasync(fd_out)
        finally:
            os.close(fd_out)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd_in)
