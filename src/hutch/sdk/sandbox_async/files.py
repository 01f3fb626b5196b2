"""`sandbox.files` (asyncio): the twin of `hutch.sdk.sandbox_sync.files`."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Literal, overload

import httpx

from hutch.models.files import FileInfo, WriteInfo
from hutch.sdk import _ops
from hutch.sdk._files import CHUNK, ReadFormat, WriteData, async_body, check_format
from hutch.sdk._http import AsyncHttp, Call


class AsyncFileStream:
    """A download being received: `async for` byte chunks; `aclose()` (or `async with`)."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._resp: httpx.Response | None = None

    @classmethod
    async def open(cls, http: AsyncHttp, call: Call[bytes]) -> AsyncFileStream:
        """Start the download; raises the typed error if the file cannot be read."""
        self = cls()
        self._resp = await self._stack.enter_async_context(http.stream(call))
        return self

    @property
    def size(self) -> int | None:
        """Total size if the server said (Content-Length)."""
        n = self._resp.headers.get("content-length") if self._resp else None
        return int(n) if n and n.isdigit() else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert self._resp is not None
        try:
            async for chunk in self._resp.aiter_bytes(CHUNK):
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release the connection."""
        await self._stack.aclose()

    async def __aenter__(self) -> AsyncFileStream:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncFiles:
    """The file system of one sandbox. Paths are absolute inside the sandbox."""

    def __init__(self, sandbox_id: str, http: AsyncHttp) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    async def read(self, path: str, format: Literal["text"] = "text") -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"]) -> bytes: ...
    @overload
    async def read(self, path: str, format: Literal["stream"]) -> AsyncFileStream: ...

    async def read(self, path: str, format: ReadFormat = "text") -> str | bytes | AsyncFileStream:
        """Read a file as text (UTF-8), bytes, or a stream of byte chunks for big files."""
        check_format(format)
        call = _ops.read_file(self._sandbox_id, path)
        if format == "stream":
            return await AsyncFileStream.open(self._http, call)
        data = await self._http.send(call)
        return data.decode(errors="replace") if format == "text" else data

    async def write(
        self, path: str, data: WriteData | AsyncIterable[bytes], user: str = "user"
    ) -> WriteInfo:
        """Create or replace a file (parents are created); file objects and (async) iterables
        are uploaded in chunks as they are read."""
        call = _ops.write_file(self._sandbox_id, path, user)
        return await self._http.send(call, async_body(data))

    async def list(self, path: str, depth: int = 1) -> list[FileInfo]:
        """Entries of a directory, `depth` levels deep."""
        return await self._http.send(_ops.list_dir(self._sandbox_id, path, depth))

    async def exists(self, path: str) -> bool:
        """Whether the path exists."""
        return await self._http.send(_ops.exists(self._sandbox_id, path))

    async def get_info(self, path: str) -> FileInfo:
        """Type, size, mode, owner and mtime of a path."""
        return await self._http.send(_ops.stat(self._sandbox_id, path))

    async def remove(self, path: str, recursive: bool = True) -> None:
        """Delete a file, or a directory with everything in it."""
        await self._http.send(_ops.remove(self._sandbox_id, path, recursive))

    async def rename(self, old_path: str, new_path: str, overwrite: bool = False) -> FileInfo:
        """Move a file or directory."""
        return await self._http.send(_ops.rename(self._sandbox_id, old_path, new_path, overwrite))

    async def make_dir(self, path: str, user: str = "user") -> FileInfo:
        """Create a directory and its parents (no error if it exists)."""
        return await self._http.send(_ops.make_dir(self._sandbox_id, path, user))
