"""Asking the upstream DNS server, on the event loop (no thread per query: a sandbox flooding
its resolver must not tie up the runner's shared worker threads)."""

from __future__ import annotations

import asyncio
import struct


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future[bytes], qid: bytes) -> None:
        self.fut, self.qid = fut, qid

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == self.qid and not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


async def udp(server: tuple[str, int], packet: bytes, timeout: float) -> bytes:
    """One query over UDP from a fresh (random-port) socket; the reply with the same id."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Reply(fut, packet[:2]), remote_addr=server
    )
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(fut, timeout)
    finally:
        transport.close()


async def tcp(server: tuple[str, int], packet: bytes, timeout: float) -> bytes:
    """One query over TCP (for answers too big for UDP)."""
    async with asyncio.timeout(timeout):
        r, w = await asyncio.open_connection(*server)
        try:
            w.write(struct.pack("!H", len(packet)) + packet)
            await w.drain()
            (n,) = struct.unpack("!H", await r.readexactly(2))
            return await r.readexactly(n)
        finally:
            w.close()
