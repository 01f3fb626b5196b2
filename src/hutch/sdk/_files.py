"""File helpers shared by the sync and async `files` namespaces: turning what the caller gives
`write()` into a body that is streamed in chunks, never loaded whole into memory."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import IO, Any, Literal

CHUNK = 1024 * 1024
ReadFormat = Literal["text", "bytes", "stream"]
WriteData = str | bytes | bytearray | memoryview | IO[Any] | Iterable[bytes]


def check_format(fmt: str) -> None:
    """Refuse an unknown read format with the allowed ones."""
    if fmt not in ("text", "bytes", "stream"):
        raise ValueError(f"format={fmt!r} is not allowed; use 'text', 'bytes' or 'stream'")


def _encode(chunk: str | bytes) -> bytes:
    return chunk.encode() if isinstance(chunk, str) else bytes(chunk)


def _iter_io(f: IO[Any]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield _encode(chunk)


def sync_body(data: WriteData) -> bytes | Iterator[bytes]:
    """Small in-memory data is sent as is; file objects and iterables as a chunked stream."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, io.IOBase) or hasattr(data, "read"):
        return _iter_io(data)  # type: ignore[arg-type]
    return (_encode(c) for c in data)


async def _aiter_io(f: IO[Any]) -> AsyncIterator[bytes]:
    while True:
        # File reads can block (network file systems, pipes); keep the event loop free.
        chunk = await asyncio.to_thread(f.read, CHUNK)
        if not chunk:
            return
        yield _encode(chunk)


async def _aiter_iterable(data: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(data, AsyncIterable):
        async for c in data:
            yield _encode(c)
    else:
        for c in data:
            yield _encode(c)


def async_body(data: WriteData | AsyncIterable[bytes]) -> bytes | AsyncIterator[bytes]:
    """The asyncio twin of `sync_body`; also takes async iterables."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, io.IOBase) or hasattr(data, "read"):
        return _aiter_io(data)  # type: ignore[arg-type]
    return _aiter_iterable(data)
