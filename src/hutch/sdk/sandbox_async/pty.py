"""`sandbox.pty` (asyncio): the twin of `hutch.sdk.sandbox_sync.pty`."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable

from hutch.models.exec import PtySize
from hutch.sdk import _frames, _ops
from hutch.sdk._http import AsyncHttp
from hutch.sdk._ws import AsyncExecStream
from hutch.sdk.sandbox_async.commands import AsyncCommandHandle, OnBytes
from hutch.sdk.sandbox_sync.pty import DEFAULT_SHELL, pty_envs
from hutch.sdk.types import CommandResult


class AsyncPtyHandle(AsyncCommandHandle):
    """A process attached to a pseudo-terminal: keystrokes in, terminal output out."""

    async def send_stdin(self, data: str | bytes) -> None:
        """Type into the terminal."""
        await (await self._ensure_stream()).send_input(data, pty=True)

    async def resize(self, size: PtySize) -> None:
        """Tell the terminal its new size (send on SIGWINCH)."""
        await (await self._ensure_stream()).send_control(_frames.resize(size.cols, size.rows))

    async def wait(
        self,
        on_stdout: object = None,
        on_stderr: object = None,
        on_pty: OnBytes | None = None,
        *,
        check: bool = False,
    ) -> CommandResult:
        """Wait until the terminal's process ends; a non-zero exit is not an error here."""
        return await super().wait(None, None, on_pty, check=check)


class AsyncPty:
    """Create and reconnect to terminals in one sandbox."""

    def __init__(self, sandbox_id: str, http: AsyncHttp) -> None:
        self._sandbox_id = sandbox_id
        self._http = http
        # Terminals this object opened, so send_stdin/resize by pid reuse their stream.
        self._open: weakref.WeakValueDictionary[int, AsyncPtyHandle] = weakref.WeakValueDictionary()

    async def create(
        self,
        size: PtySize | None = None,
        on_data: OnBytes | None = None,
        *,
        cmd: str | list[str] | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        user: str = "user",
        timeout: float | None = None,
    ) -> AsyncPtyHandle:
        """Start a login shell (or `cmd`) on a terminal of `size`; `on_data` (sync or async)
        receives output bytes from a background task as they arrive."""
        req = _ops.exec_request(
            cmd or DEFAULT_SHELL,
            envs=pty_envs(envs),
            cwd=cwd,
            user=user,
            timeout=timeout,
            pty=size or PtySize(),
        )
        stream = await AsyncExecStream.open(self._http.config, self._sandbox_id, _frames.start(req))
        handle = AsyncPtyHandle(self._sandbox_id, stream.pid, self._http, stream, pty=True)
        if on_data is not None:
            await handle.start_pump(on_pty=on_data)
        self._open[handle.pid] = handle
        return handle

    async def connect(self, pid: int, on_data: OnBytes | None = None) -> AsyncPtyHandle:
        """Reattach to a running terminal."""
        stream = await AsyncExecStream.open(
            self._http.config, self._sandbox_id, _frames.attach(pid), attach_pid=pid
        )
        handle = AsyncPtyHandle(self._sandbox_id, pid, self._http, stream, pty=True)
        if on_data is not None:
            await handle.start_pump(on_pty=on_data)
        self._open[handle.pid] = handle
        return handle

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Type into terminal `pid` (as `handle.send_stdin`)."""
        await self._on_terminal(pid, lambda h: h.send_stdin(data))

    async def resize(self, pid: int, size: PtySize) -> None:
        """Give terminal `pid` a new size (as `handle.resize`)."""
        await self._on_terminal(pid, lambda h: h.resize(size))

    async def _on_terminal(
        self, pid: int, act: Callable[[AsyncPtyHandle], Awaitable[None]]
    ) -> None:
        """`act` on terminal `pid`: through the handle this object opened, else attached for
        the moment."""
        handle = self._open.get(pid)
        if handle is not None:
            await act(handle)
            return
        handle = await self.connect(pid)
        try:
            await act(handle)
        finally:
            await handle.disconnect()

    async def kill(self, pid: int) -> bool:
        """SIGKILL the terminal's process; False if it was already gone."""
        return await AsyncPtyHandle(self._sandbox_id, pid, self._http).kill()
