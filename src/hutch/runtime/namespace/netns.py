"""TCP connections into a sandbox's network namespace, made from the runner's side.

A socket belongs to the network namespace it was created in, whatever thread later uses it.
So a short-lived thread joins the sandbox's namespace (setns only moves the calling thread),
creates the socket, and ends; the runner then connects and relays from its own threads. The
sandbox gets no interface and no route: the connection exists only on its loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import threading

from hutch.models import ErrorCode, HutchError

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT_S = 5.0
# Loopback addresses tried in order: most servers bind 127.0.0.1 or 0.0.0.0; some bind only ::1.
LOOPBACKS: tuple[tuple[socket.AddressFamily, str], ...] = (
    (socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, "::1"),
)

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _sockets_in(ns_fd: int, families: list[socket.AddressFamily]) -> list[socket.socket]:
    """Create one TCP socket per family inside the namespace `ns_fd` (from a fresh thread)."""
    out: list[socket.socket] = []
    error: list[BaseException] = []

    def work() -> None:
        # This thread ends right after: even if returning to the host namespace failed, no
        # other work could ever run in the sandbox's namespace by accident.
        try:
            _setns(ns_fd)
            for fam in families:
                with contextlib.suppress(OSError):  # e.g. IPv6 disabled on the host
                    out.append(socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=work, name="hutch-netns", daemon=True)
    t.start()
    t.join()
    if error:
        for s in out:
            s.close()
        raise error[0]
    return out


async def connect_in_netns(
    ns_fd: int, port: int, timeout: float = CONNECT_TIMEOUT_S
) -> socket.socket:
    """A connected, non-blocking socket to `port` on the loopback of the namespace `ns_fd`."""
    socks = await asyncio.to_thread(_sockets_in, ns_fd, [f for f, _ in LOOPBACKS])
    loop = asyncio.get_running_loop()
    addresses = dict(LOOPBACKS)
    refused: list[str] = []
    try:
        while socks:
            s = socks.pop(0)
            s.setblocking(False)
            addr = addresses[s.family]
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(s, (addr, port))
            except (OSError, TimeoutError) as e:
                s.close()
                refused.append(f"{addr}: {_reason(e)}")
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
    finally:
        for s in socks:
            s.close()
    raise HutchError(
        ErrorCode.port_unreachable,
        f"nothing accepts connections on port {port} in the sandbox ({'; '.join(refused)})",
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
        return "connection refused"
    return e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
