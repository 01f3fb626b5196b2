"""Host mounts for a gVisor sandbox: id-mapped template layers and the overlay rootfs.

The sandbox's uid N is host uid `uid_base + N` (as in the namespace class), so the gofer can run
unprivileged in a user namespace and files written inside land on the host with the same owners
the files API uses. Template layers are stored with plain ids (0, 1000, ...), so each layer is
bind-mounted with an id mapping (`mount_setattr(MOUNT_ATTR_IDMAP)`) before overlayfs stacks them.

The new mount API has no wrapper in the standard library or in a maintained package, so the four
syscalls are called through ctypes here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import subprocess
from pathlib import Path

UID_RANGE = 65536

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_EMPTY_PATH = 0x1000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_IDMAP = 0x100000
_MNT_DETACH = 2
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str, path: Path | str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))
    return ret


class UserNamespace:
    """A user namespace mapping ids 0..65535 to `uid_base`.., held open by a tiny process.

    Only its file descriptor is needed (for id-mapped mounts); the process exits on `close`.
    """

    def __init__(self, uid_base: int) -> None:
        # `unshare --user` creates the namespace; root writes the maps from outside, which is
        # allowed without newuidmap because we hold CAP_SETUID/CAP_SETGID in the parent.
        self._proc = subprocess.Popen(
            ["unshare", "--user", "--", "sh", "-c", "echo ready; read _"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.fd = -1
        try:
            assert self._proc.stdout is not None
            if self._proc.stdout.readline().strip() != b"ready":
                raise OSError(errno.EPERM, "could not create a user namespace (unshare --user)")
            pid = self._proc.pid
            line = f"0 {uid_base} {UID_RANGE}\n"
            Path(f"/proc/{pid}/uid_map").write_text(line)
            Path(f"/proc/{pid}/gid_map").write_text(line)
            self.fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the namespace fd and let the holder process exit."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> UserNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def idmapped_bind(source: Path, target: Path, userns_fd: int) -> None:
    """Bind `source` read-only at `target`, its ids shifted through `userns_fd`'s mapping."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    tree = _check(
        libc.syscall(
            _SYS_OPEN_TREE,
            -100,
            os.fsencode(source),
            _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE,
        ),
        "open_tree",
        source,
    )
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY, 0, 0, userns_fd)
        _check(
            libc.syscall(
                _SYS_MOUNT_SETATTR,
                tree,
                b"",
                _AT_EMPTY_PATH | _AT_RECURSIVE,
                ctypes.byref(attr),
                ctypes.sizeof(attr),
            ),
            "mount_setattr(MOUNT_ATTR_IDMAP)",
            source,
        )
        _check(
            libc.syscall(
                _SYS_MOVE_MOUNT, tree, b"", -100, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH
            ),
            "move_mount",
            target,
        )
    finally:
        os.close(tree)


def mount_overlay(lower: list[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount overlayfs at `target`; `lower` is given lowest first, as in the plan."""
    for p in [*lower, upper, work, target]:
        if any(c in str(p) for c in ",:\\\n"):
            raise ValueError(f"path not usable in overlay options: {p!r}")
    # overlayfs lists lower layers topmost first.
    lowerdir = ":".join(str(p) for p in reversed(lower))
    opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    libc = _libc()
    _check(
        libc.mount(
            b"overlay", os.fsencode(target), b"overlay", _MS_NOSUID | _MS_NODEV, opts.encode()
        ),
        "mount overlay",
        target,
    )


def bind(source: Path, target: Path) -> None:
    """Bind-mount `source` (a directory or mount) at `target`."""
    libc = _libc()
    _check(
        libc.mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND, None),
        "bind mount",
        target,
    )


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below `prefix`, deepest first (the order to unmount them)."""
    found: list[Path] = []
    pfx = str(prefix).rstrip("/")
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _unescape(line.split(b" ")[4].decode())
            if point == pfx or point.startswith(pfx + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def unmount_all(prefix: Path) -> list[Path]:
    """Unmount everything at or below `prefix`; lazily where busy. Returns what is still mounted."""
    libc = _libc()
    for point in mounts_under(prefix):
        if libc.umount2(os.fsencode(point), 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EBUSY:
                libc.umount2(os.fsencode(point), _MNT_DETACH)
    return mounts_under(prefix)


def remove_empty_dir(path: Path) -> None:
    """Remove `path` if it exists and is an empty directory (never follows into mounts)."""
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()
