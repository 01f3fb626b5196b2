"""`sandbox.files` (blocking): read, write (streamed), list and manage sandbox files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from types import TracebackType
from typing import Literal, overload

import httpx

from hutch.models.files import FileInfo, WriteInfo
from hutch.sdk import _ops
from hutch.sdk._files import CHUNK, ReadFormat, WriteData, check_format, sync_body
from hutch.sdk._http import Call, SyncHttp


class FileStream:
    """A download being received: iterate for byte chunks; close (or use `with`) when done."""

    def __init__(self, http: SyncHttp, call: Call[bytes]) -> None:
        self._stack = ExitStack()
        self._resp: httpx.Response = self._stack.enter_context(http.stream(call))

    @property
    def size(self) -> int | None:
        """Total size if the server said (Content-Length)."""
        n = self._resp.headers.get("content-length")
        return int(n) if n and n.isdigit() else None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._resp.iter_bytes(CHUNK)
        finally:
            self.close()

    def close(self) -> None:
        """Release the connection."""
        self._stack.close()

    def __enter__(self) -> FileStream:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Files:
    """The file system of one sandbox. Paths are absolute inside the sandbox."""

    def __init__(self, sandbox_id: str, http: SyncHttp) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...
    @overload
    def read(self, path: str, format: Literal["stream"]) -> FileStream: ...

    def read(self, path: str, format: ReadFormat = "text") -> str | bytes | FileStream:
        """Read a file as text (UTF-8), bytes, or a stream of byte chunks for big files."""
        check_format(format)
        call = _ops.read_file(self._sandbox_id, path)
        if format == "stream":
            return FileStream(self._http, call)
        data = self._http.send(call)
        return data.decode(errors="replace") if format == "text" else data

    def write(self, path: str, data: WriteData, user: str = "user") -> WriteInfo:
        """Create or replace a file (parents are created). File objects and iterables are
        uploaded in chunks as they are read."""
        return self._http.send(_ops.write_file(self._sandbox_id, path, user), sync_body(data))

    def list(self, path: str, depth: int = 1) -> list[FileInfo]:
        """Entries of a directory, `depth` levels deep."""
        return self._http.send(_ops.list_dir(self._sandbox_id, path, depth))

    def exists(self, path: str) -> bool:
        """Whether the path exists."""
        return self._http.send(_ops.exists(self._sandbox_id, path))

    def get_info(self, path: str) -> FileInfo:
        """Type, size, mode, owner and mtime of a path."""
        return self._http.send(_ops.stat(self._sandbox_id, path))

    def remove(self, path: str, recursive: bool = True) -> None:
        """Delete a file, or a directory with everything in it."""
        self._http.send(_ops.remove(self._sandbox_id, path, recursive))

    def rename(self, old_path: str, new_path: str, overwrite: bool = False) -> FileInfo:
        """Move a file or directory."""
        return self._http.send(_ops.rename(self._sandbox_id, old_path, new_path, overwrite))

    def make_dir(self, path: str, user: str = "user") -> FileInfo:
        """Create a directory and its parents (no error if it exists)."""
        return self._http.send(_ops.make_dir(self._sandbox_id, path, user))
