"""Async client for the control socket of a sandbox's PID 1 (see csrc/hutch-sandbox.c)."""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import os
import socket
import struct

from hutch.runtime.base import ExitStatus

MAX_MSG = 600 * 1024
SO_SNDBUFFORCE = 32  # not exported by the socket module


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return list(fds)


class InitError(OSError):
    """PID 1 refused a request (errno and message from inside the sandbox)."""


class InitConnection:
    """One connection to a sandbox's PID 1; replies come back in request order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._pending: collections.deque[asyncio.Future[tuple[list[str], list[int]]]] = (
            collections.deque()
        )
        self._exits: dict[int, asyncio.Future[ExitStatus]] = {}
        self._lock = asyncio.Lock()
        self.closed = asyncio.Event()

    async def connect(self) -> None:
        """Connect and start reading replies and exit notices."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        # Big enough for the largest request (argv + env are bounded by the wire models).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 2 * MAX_MSG)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 5, 0))
        # Through a directory fd: unix socket paths are limited to 108 bytes.
        dfd = os.open(os.path.dirname(self.path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sock.connect(f"/proc/self/fd/{dfd}/{os.path.basename(self.path)}")
        except OSError:
            sock.close()
            raise
        finally:
            os.close(dfd)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Drop the connection; pending requests fail."""
        if self._sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        err = ConnectionError("the sandbox's control connection closed")
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(err)
        for xfut in self._exits.values():
            if not xfut.done():
                xfut.set_exception(err)
        self.closed.set()

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                # not socket.recv_fds: on Python 3.11 it drops its flags (MSG_DONTWAIT)
                data, anc, _flags, _ = self._sock.recvmsg(
                    MAX_MSG, socket.CMSG_LEN(2 * 4), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            fds = _fds(anc)
            if not data:
                for fd in fds:
                    os.close(fd)
                self.close()
                return
            toks = data.decode(errors="replace").split("\0")
            if toks[0] == "exit":
                kv = dict(t.split("=", 1) for t in toks[2:] if "=" in t)
                pid = int(kv["pid"])
                code, sig = int(kv["code"]), int(kv["signal"])
                status = ExitStatus(code=None if code < 0 else code, signal=sig or None)
                xfut = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
                if not xfut.done():
                    xfut.set_result(status)
                for fd in fds:
                    os.close(fd)
                continue
            if self._pending:
                fut2 = self._pending.popleft()
                if not fut2.done():
                    fut2.set_result((toks, fds))
                    continue
            for fd in fds:
                os.close(fd)

    async def _request(self, toks: list[str], fds: list[int]) -> tuple[dict[str, str], list[int]]:
        if self._sock is None:
            raise ConnectionError("the sandbox's control connection is closed")
        msg = b"".join(t.encode() + b"\0" for t in toks)
        fut: asyncio.Future[tuple[list[str], list[int]]] = (
            asyncio.get_running_loop().create_future()
        )
        async with self._lock:  # one request in flight keeps replies matched to requests
            self._pending.append(fut)
            try:
                socket.send_fds(self._sock, [msg], fds)
            except OSError:
                self._pending.remove(fut)
                raise
            reply, rfds = await fut
        kv = dict(t.split("=", 1) for t in reply[2:] if "=" in t)
        if reply[0] == "error":
            for fd in rfds:
                os.close(fd)
            raise InitError(int(kv.get("errno", "0")), kv.get("msg", "request failed"))
        return kv, rfds

    async def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        uid: int,
        gid: int,
        cwd: str,
        fds: list[int],
        pty: tuple[int, int] | None = None,
    ) -> tuple[int, int | None]:
        """Start a process; return its pid inside the sandbox and, for a PTY, the master fd."""
        toks = ["spawn", "-", f"uid={uid}", f"gid={gid}", f"cwd={cwd}"]
        if pty:
            toks.append(f"pty={pty[0]}x{pty[1]}")
        toks += [f"arg={a}" for a in argv]
        toks += [f"env={k}={v}" for k, v in env.items()]
        kv, rfds = await self._request(toks, [] if pty else fds)
        pid = int(kv["pid"])
        self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
        return pid, (rfds[0] if rfds else None)

    async def signal(self, pid: int, sig: int) -> None:
        """Signal a process started through this sandbox's PID 1, and its process group."""
        await self._request(["signal", "-", f"pid={pid}", f"sig={sig}"], [])

    async def wait(self, pid: int) -> ExitStatus:
        """Wait for a spawned process to end."""
        fut = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done():
                self._exits.pop(pid, None)
