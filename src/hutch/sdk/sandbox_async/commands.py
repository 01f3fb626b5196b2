"""`sandbox.commands` (asyncio): the twin of `hutch.sdk.sandbox_sync.commands`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, overload

from hutch.models.exec import ErrorFrame, ExecRequest, ExitFrame, ProcessInfo
from hutch.sdk import _frames, _ops
from hutch.sdk._http import AsyncHttp
from hutch.sdk._ws import AsyncExecStream
from hutch.sdk.exceptions import ProcessNotFoundError, error_from_frame
from hutch.sdk.types import CommandResult, check_result

OutputTuple = tuple[str | None, str | None, bytes | None]
OnText = Callable[[str], object | Awaitable[object]]
OnBytes = Callable[[bytes], object | Awaitable[object]]


async def _call(cb: Callable[[Any], object], value: str | bytes) -> None:
    r = cb(value)
    if inspect.isawaitable(r):
        await r


_DETACHED: set[asyncio.Future[Any]] = set()
KILL_WAIT_S = 2.0


def _detach(task: asyncio.Future[Any]) -> None:
    """Let `task` finish on its own (kept referenced; its failure is not reported)."""
    _DETACHED.add(task)

    def done(t: asyncio.Future[Any]) -> None:
        _DETACHED.discard(t)
        if not t.cancelled():
            t.exception()

    task.add_done_callback(done)


class AsyncCommandHandle:
    """A running command: `async for` its output, `await wait()`, `await kill()`..."""

    def __init__(
        self,
        sandbox_id: str,
        pid: int,
        http: AsyncHttp,
        stream: AsyncExecStream | None = None,
        *,
        pty: bool = False,
    ) -> None:
        self._sandbox_id = sandbox_id
        self._pid = pid
        self._http = http
        self._stream = stream
        self._pty = pty
        self._out = _frames.OutputCollector()
        self._out.pid = pid
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        """Process id inside the sandbox."""
        return self._pid

    @property
    def stdout(self) -> str:
        """Stdout received so far."""
        return self._out.stdout

    @property
    def stderr(self) -> str:
        """Stderr received so far."""
        return self._out.stderr

    @property
    def exit_code(self) -> int | None:
        """Exit code once the command ended, else None."""
        return self._out.result.exit_code if self._out.result else None

    @property
    def done(self) -> bool:
        """Whether the command is known to have ended (or its output pump stopped)."""
        if self._out.result is not None:
            return True
        return self._pump is not None and self._pump.done()

    async def _ensure_stream(self) -> AsyncExecStream:
        async with self._lock:
            if self._stream is None:
                if self._out.result is not None:
                    raise ProcessNotFoundError(f"process {self._pid} has ended", status=404)
                self._stream = await AsyncExecStream.open(
                    self._http.config, self._sandbox_id, _frames.attach(self._pid), self._pid
                )
            return self._stream

    async def __aiter__(self) -> AsyncIterator[OutputTuple]:
        stream = await self._ensure_stream()
        try:
            async for ev in stream.events():
                if isinstance(ev, _frames.Output):
                    out = self._out.text(ev)
                    if out != (None, None, None):
                        yield out
                elif isinstance(ev, ExitFrame):
                    self._out.finish(ev)
                    return
                elif isinstance(ev, ErrorFrame):
                    raise error_from_frame(ev.code, ev.detail)
            raise _frames.stream_closed_early()
        finally:
            await self.disconnect()

    async def _consume(
        self, on_stdout: OnText | None, on_stderr: OnText | None, on_pty: OnBytes | None
    ) -> None:
        async for out, err, pty in self:
            if out is not None and on_stdout:
                await _call(on_stdout, out)
            elif err is not None and on_stderr:
                await _call(on_stderr, err)
            elif pty is not None and on_pty:
                await _call(on_pty, pty)

    async def start_pump(
        self,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_pty: OnBytes | None = None,
    ) -> None:
        """Deliver output to callbacks from a background task as it arrives."""
        await self._ensure_stream()
        self._pump = asyncio.create_task(self._consume(on_stdout, on_stderr, on_pty))

    async def wait(
        self,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_pty: OnBytes | None = None,
        *,
        check: bool = True,
    ) -> CommandResult:
        """Wait until the command ends; raise `CommandExitException` on a non-zero exit."""
        if self._pump is not None:
            await self._pump
        elif self._out.result is None:
            try:
                await self._consume(on_stdout, on_stderr, on_pty)
            except ProcessNotFoundError:
                # Ended and forgotten before we attached: ask for its recorded result instead.
                result = CommandResult.from_exec(
                    await self._http.send(_ops.wait_process(self._sandbox_id, self._pid))
                )
                return check_result(result) if check else result
        assert self._out.result is not None
        return check_result(self._out.result) if check else self._out.result

    async def kill(self) -> bool:
        """SIGKILL the command; False if it was already gone."""
        try:
            await self._http.send(_ops.signal_process(self._sandbox_id, self._pid, 9))
        except ProcessNotFoundError:
            return False
        return True

    async def send_stdin(self, data: str | bytes) -> None:
        """Write to the command's stdin (over the open stream if there is one)."""
        if self._stream is not None:
            await self._stream.send_input(data, pty=self._pty)
        else:
            await self._http.send(_ops.send_stdin(self._sandbox_id, self._pid, data))

    async def close_stdin(self) -> None:
        """Send EOF to the command's stdin."""
        if self._stream is not None:
            await self._stream.send_control(_frames.close_stdin())
        else:
            await self._http.send(_ops.send_stdin(self._sandbox_id, self._pid, "", eof=True))

    async def disconnect(self) -> None:
        """Stop receiving output; the process keeps running (reconnect with `connect(pid)`)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()


class AsyncCommands:
    """Run and manage commands in one sandbox."""

    def __init__(self, sandbox_id: str, http: AsyncHttp) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    async def run(
        self,
        cmd: str | list[str],
        *,
        background: Literal[False] = False,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        stdin: str | None = None,
        request_timeout: float | None = None,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | list[str],
        *,
        background: Literal[True],
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        stdin: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str | list[str],
        *,
        background: bool = False,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        timeout: float | None = 60,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        stdin: str | None = None,
        request_timeout: float | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        """Run `cmd` and return its `CommandResult` (non-zero exit raises
        `CommandExitException`); callbacks get output as produced; `background=True` returns
        an `AsyncCommandHandle` at once."""
        req = _ops.exec_request(
            cmd, envs=envs, cwd=cwd, user=user, timeout=timeout, stdin=stdin, background=background
        )
        if background:
            info: ProcessInfo = await self._http.send(
                _ops.exec_call(self._sandbox_id, req, request_timeout)
            )
            handle = AsyncCommandHandle(self._sandbox_id, info.pid, self._http)
            if on_stdout or on_stderr:
                await handle.start_pump(on_stdout, on_stderr)
            return handle
        if on_stdout or on_stderr:
            handle = await self._stream(req)
            try:
                if req.stdin is None:  # as without callbacks: the command reads end-of-input
                    await handle.close_stdin()
                return await handle.wait(on_stdout, on_stderr)
            except BaseException:
                # Cancelled, or a callback raised: the command dies with the call. The kill is a
                # task of its own so that it is sent even while this one is being cancelled,
                # and waited for briefly: `asyncio.run` cancels what is left when it ends.
                if handle.exit_code is None:
                    kill = asyncio.ensure_future(handle.kill())
                    _detach(kill)
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(asyncio.shield(kill), KILL_WAIT_S)
                raise
        rt = self._http.config.request_timeout if request_timeout is None else request_timeout
        result = await self._http.send(_ops.exec_call(self._sandbox_id, req, rt))
        return check_result(CommandResult.from_exec(result))

    async def _stream(self, req: ExecRequest, pty: bool = False) -> AsyncCommandHandle:
        stream = await AsyncExecStream.open(self._http.config, self._sandbox_id, _frames.start(req))
        return AsyncCommandHandle(self._sandbox_id, stream.pid, self._http, stream, pty=pty)

    async def list(self) -> list[ProcessInfo]:
        """Processes started through exec that are still tracked (running or just ended)."""
        return await self._http.send(_ops.list_processes(self._sandbox_id))

    async def connect(
        self, pid: int, on_stdout: OnText | None = None, on_stderr: OnText | None = None
    ) -> AsyncCommandHandle:
        """Reconnect to a background command; its buffered output is replayed first."""
        stream = await AsyncExecStream.open(
            self._http.config, self._sandbox_id, _frames.attach(pid), attach_pid=pid
        )
        handle = AsyncCommandHandle(self._sandbox_id, pid, self._http, stream)
        if on_stdout or on_stderr:
            await handle.start_pump(on_stdout, on_stderr)
        return handle

    async def kill(self, pid: int) -> bool:
        """SIGKILL a command; False if there was no such process."""
        return await AsyncCommandHandle(self._sandbox_id, pid, self._http).kill()

    async def send_stdin(self, pid: int, data: str | bytes, eof: bool = False) -> None:
        """Write to a background command's stdin (and close it if `eof`)."""
        await self._http.send(_ops.send_stdin(self._sandbox_id, pid, data, eof=eof))
