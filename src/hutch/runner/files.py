"""The files API of one sandbox, confined by `fsconfine` to the sandbox's own file system."""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
import shutil
import stat as st
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio

from hutch.models import ErrorCode, FileInfo, FileType, HutchError
from hutch.runner.fsconfine import (
    RENAME_NOREPLACE,
    normalize,
    openat2,
    os_error,
    renameat2,
    split_parent,
)

CHUNK = 1024 * 1024
MAX_LIST_ENTRIES = 10000


def _type(mode: int) -> FileType:
    if st.S_ISREG(mode):
        return FileType.file
    if st.S_ISDIR(mode):
        return FileType.dir
    if st.S_ISLNK(mode):
        return FileType.symlink
    return FileType.other


class SandboxFiles:
    """File operations beneath one sandbox root. `uid_base` maps sandbox uids to host uids."""

    def __init__(self, root: Path, uid_base: int) -> None:
        self.root = root
        self.uid_base = uid_base

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        try:
            fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise HutchError(ErrorCode.sandbox_not_running, "the sandbox is not running") from e
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str, str]]:
        """Yield (parent dir fd, entry name, normalised path)."""
        norm = normalize(path)
        parent, name = split_parent(norm)
        with self._root_fd() as root:
            try:
                pfd = openat2(root, parent, os.O_PATH | os.O_DIRECTORY)
            except OSError as e:
                raise os_error(e, parent) from None
            try:
                yield pfd, name, norm
            finally:
                os.close(pfd)

    def _info(self, pfd: int, name: str, path: str) -> FileInfo:
        s = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        target = None
        if st.S_ISLNK(s.st_mode):
            target = os.readlink(name, dir_fd=pfd)
        return FileInfo(
            name=name or "/",
            path=path,
            type=_type(s.st_mode),
            size=s.st_size,
            mode=st.S_IMODE(s.st_mode),
            uid=max(s.st_uid - self.uid_base, -1) if s.st_uid >= self.uid_base else 65534,
            gid=max(s.st_gid - self.uid_base, -1) if s.st_gid >= self.uid_base else 65534,
            mtime=datetime.fromtimestamp(s.st_mtime, UTC),
            symlink_target=target,
        )

    # --------------------------------------------------------------- metadata

    def stat(self, path: str) -> FileInfo:
        """Describe one entry (a symlink itself, not its target)."""
        if normalize(path) == "/":
            with self._root_fd() as root:
                s = os.fstat(root)
                return FileInfo(
                    name="/",
                    path="/",
                    type=FileType.dir,
                    size=s.st_size,
                    mode=st.S_IMODE(s.st_mode),
                    uid=0,
                    gid=0,
                    mtime=datetime.fromtimestamp(s.st_mtime, UTC),
                )
        with self._parent(path) as (pfd, name, norm):
            try:
                return self._info(pfd, name, norm)
            except OSError as e:
                raise os_error(e, norm) from None

    def exists(self, path: str) -> bool:
        """Whether the path exists (refuses paths outside the sandbox)."""
        try:
            self.stat(path)
        except HutchError as e:
            if e.code in (ErrorCode.file_not_found, ErrorCode.not_a_directory):
                return False
            raise
        return True

    def list(self, path: str, depth: int = 1) -> builtins.list[FileInfo]:
        """Entries of a directory, down to `depth` levels."""
        if not 1 <= depth <= 10:
            raise HutchError(ErrorCode.invalid_request, "depth must be between 1 and 10")
        norm = normalize(path)
        out: builtins.list[FileInfo] = []
        with self._root_fd() as root:
            self._walk(root, norm, depth, out)
        return out

    def _walk(self, root: int, path: str, depth: int, out: builtins.list[FileInfo]) -> None:
        try:
            dfd = openat2(root, path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise os_error(e, path) from None
        try:
            names = sorted(os.listdir(dfd))
            for name in names:
                if len(out) >= MAX_LIST_ENTRIES:
                    raise HutchError(
                        ErrorCode.file_error,
                        f"{path} holds more than {MAX_LIST_ENTRIES} entries; list a subdirectory",
                    )
                child = f"{path.rstrip('/')}/{name}"
                try:
                    info = self._info(dfd, name, child)
                except FileNotFoundError:
                    continue  # removed while listing
                out.append(info)
                if depth > 1 and info.type == FileType.dir:
                    with contextlib.suppress(HutchError):
                        self._walk(root, child, depth - 1, out)
        finally:
            os.close(dfd)

    # --------------------------------------------------------------- changes

    def _owner(self, user: str) -> int:
        return self.uid_base + (0 if user == "root" else 1000)

    def make_dir(self, path: str, user: str = "user") -> FileInfo:
        """mkdir -p; created directories belong to `user`."""
        norm = normalize(path)
        owner = self._owner(user)
        with self._root_fd() as root:
            cur = "/"
            for part in [p for p in norm.split("/") if p]:
                cur = f"{cur.rstrip('/')}/{part}"
                try:
                    pfd = openat2(root, posixpath_parent(cur), os.O_PATH | os.O_DIRECTORY)
                except OSError as e:
                    raise os_error(e, cur) from None
                try:
                    os.mkdir(part, 0o755, dir_fd=pfd)
                    # chown through an fd of what we made, not by name: the sandbox could swap
                    # the name for a link to a root-owned file in between
                    dfd = os.open(
                        part,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=pfd,
                    )
                    try:
                        os.fchown(dfd, owner, owner)
                    finally:
                        os.close(dfd)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise os_error(e, cur) from None
                finally:
                    os.close(pfd)
        info = self.stat(norm)
        if info.type != FileType.dir:
            raise HutchError(ErrorCode.not_a_directory, f"{norm} exists and is not a directory")
        return info

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, a symlink (not its target) or a directory."""
        with self._parent(path) as (pfd, name, norm):
            try:
                s = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if st.S_ISDIR(s.st_mode):
                    if recursive:
                        shutil.rmtree(name, dir_fd=pfd)
                    else:
                        os.rmdir(name, dir_fd=pfd)
                else:
                    os.unlink(name, dir_fd=pfd)
            except OSError as e:
                raise os_error(e, norm) from None

    def rename(self, src: str, dst: str, overwrite: bool = False) -> FileInfo:
        """Move an entry; refuses to replace an existing one unless `overwrite`."""
        with self._parent(src) as (sfd, sname, snorm), self._parent(dst) as (dfd, dname, dnorm):
            try:
                renameat2(sfd, sname, dfd, dname, 0 if overwrite else RENAME_NOREPLACE)
            except OSError as e:
                raise os_error(e, dnorm if e.filename == dname else snorm) from None
            return self._info(dfd, dname, dnorm)

    # --------------------------------------------------------------- content

    def open_read(self, path: str) -> tuple[int, int]:
        """Open a regular file for reading; return (fd, size). Never blocks on FIFOs."""
        norm = normalize(path)
        with self._root_fd() as root:
            try:
                fd = openat2(root, norm, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            except OSError as e:
                raise os_error(e, norm) from None
        s = os.fstat(fd)
        if not st.S_ISREG(s.st_mode):
            os.close(fd)
            kind = "a directory" if st.S_ISDIR(s.st_mode) else "not a regular file"
            code = ErrorCode.is_a_directory if st.S_ISDIR(s.st_mode) else ErrorCode.file_error
            raise HutchError(code, f"{norm} is {kind}; only regular files can be read")
        return fd, s.st_size

    async def read_chunks(self, fd: int) -> AsyncIterator[bytes]:
        """Stream the content of a file opened by `open_read`, closing it at the end."""
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(os.read, fd, CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)

    async def write_stream(
        self, path: str, chunks: AsyncIterator[bytes], user: str = "user", mode: int = 0o644
    ) -> int:
        """Write a file atomically: into a temporary sibling, then renamed over the target.

        Renaming replaces a symlink or hard link at the target instead of writing through it,
        and a failed upload (disk full, client gone) leaves the old content untouched.
        """
        owner = self._owner(user)
        parent, _ = split_parent(normalize(path))
        if not self.exists(parent):  # like E2B: writing a file creates its directories
            self.make_dir(parent, user)
        with self._parent(path) as (pfd, name, norm):
            try:
                s = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if st.S_ISDIR(s.st_mode):
                    raise HutchError(ErrorCode.is_a_directory, f"{norm} is a directory")
            except FileNotFoundError:
                pass
            tmp = f".{name[:200]}.hutch-upload-{secrets.token_hex(6)}"
            try:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=pfd
                )
            except OSError as e:
                raise os_error(e, norm) from None
            size = 0
            try:
                try:
                    os.fchown(fd, owner, owner)
                    async for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            n = await anyio.to_thread.run_sync(os.write, fd, view)
                            view = view[n:]
                        size += len(chunk)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=pfd)
                raise os_error(e, norm) from None
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=pfd)
                raise
        return size


def posixpath_parent(path: str) -> str:
    """Parent of a normalised absolute path."""
    return path.rsplit("/", 1)[0] or "/"
