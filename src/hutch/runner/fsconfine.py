"""Path resolution confined to a sandbox's root, by the kernel.

Every files-API path is resolved with openat2(2) under a directory fd of the sandbox's `/` with
RESOLVE_IN_ROOT (`..` and absolute symlinks stay inside, as under chroot), RESOLVE_NO_MAGICLINKS
(no /proc/*/fd or /proc/*/root jumps) and RESOLVE_NO_XDEV (no crossing into /proc, /sys, /dev or
any other mount of the sandbox). Python has no openat2 wrapper, hence ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
from pathlib import Path

from hutch.models import ErrorCode, HutchError

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_openat2 = 437
_SYS_renameat2 = 316
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
RENAME_NOREPLACE = 1
CONFINE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def normalize(path: str) -> str:
    """Normalise an absolute sandbox path; refuse one that climbs above `/`."""
    if not path.startswith("/"):
        raise HutchError(ErrorCode.path_outside_sandbox, f"path {path!r} must be absolute")
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise HutchError(
                    ErrorCode.path_outside_sandbox,
                    f"path {path!r} leads outside the sandbox ('..' above '/')",
                )
        elif part not in ("", "."):
            depth += 1
    return posixpath.normpath(path).replace("//", "/")


def openat2(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """Open `path` beneath `root_fd` with the confinement flags; raise OSError on failure."""
    rel = path.lstrip("/") or "."
    how = _OpenHow(flags | os.O_CLOEXEC, mode, CONFINE)
    fd = _libc.syscall(
        _SYS_openat2,
        ctypes.c_int(root_fd),
        ctypes.c_char_p(os.fsencode(rel)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int(fd)


def renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    """rename(2) between two directory fds, optionally refusing to replace."""
    r = _libc.syscall(
        _SYS_renameat2,
        ctypes.c_int(src_dir),
        ctypes.c_char_p(os.fsencode(src)),
        ctypes.c_int(dst_dir),
        ctypes.c_char_p(os.fsencode(dst)),
        ctypes.c_uint(flags),
    )
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


def split_parent(path: str) -> tuple[str, str]:
    """(parent, name) of a normalised path; refuses `/` itself as a target."""
    parent, name = posixpath.split(path)
    if not name:
        raise HutchError(ErrorCode.file_error, "this operation cannot act on '/' itself")
    return parent or "/", name


def os_error(e: OSError, path: str) -> HutchError:
    """Map an OSError from a confined operation to a typed, readable error."""
    code = {
        errno.ENOENT: ErrorCode.file_not_found,
        errno.EEXIST: ErrorCode.file_exists,
        errno.ENOTDIR: ErrorCode.not_a_directory,
        errno.EISDIR: ErrorCode.is_a_directory,
        errno.ENOTEMPTY: ErrorCode.directory_not_empty,
        errno.ENOSPC: ErrorCode.disk_full,
        errno.EDQUOT: ErrorCode.disk_full,
        errno.EXDEV: ErrorCode.path_outside_sandbox,
        errno.ELOOP: ErrorCode.path_outside_sandbox,
    }.get(e.errno or 0, ErrorCode.file_error)
    if code == ErrorCode.path_outside_sandbox:
        return HutchError(
            code,
            f"path {path!r} crosses a mount point or a link that leads outside the sandbox's "
            "file system (only the sandbox's own files can be reached; /proc, /sys and /dev "
            "cannot)",
        )
    if code == ErrorCode.disk_full:
        return HutchError(code, f"no space left on the sandbox's disk while writing {path!r}")
    return HutchError(code, f"{path}: {e.strerror}")


def replace_file(root: Path, path: str, data: bytes, uid: int) -> None:
    """Replace a file under a sandbox's root, owned by `uid`, as the runner: confined to the
    root, and a symlink the sandbox put there is replaced, never followed."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parent, name = split_parent("/" + path.lstrip("/"))
        dir_fd = openat2(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
    finally:
        os.close(root_fd)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
        )
    finally:
        os.close(dir_fd)
    try:
        os.fchown(fd, uid, uid)
        os.write(fd, data)
    finally:
        os.close(fd)
