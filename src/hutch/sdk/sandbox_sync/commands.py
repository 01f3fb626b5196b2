"""`sandbox.commands` (blocking): run commands, start background ones, reconnect to them."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Literal, overload

from hutch.models.exec import ErrorFrame, ExecRequest, ExitFrame, ProcessInfo
from hutch.sdk import _frames, _ops
from hutch.sdk._http import SyncHttp
from hutch.sdk._ws import SyncExecStream
from hutch.sdk.exceptions import ProcessNotFoundError, error_from_frame
from hutch.sdk.types import CommandResult, check_result

OutputTuple = tuple[str | None, str | None, bytes | None]
OnText = Callable[[str], object]
OnBytes = Callable[[bytes], object]


class CommandHandle:
    """A running command: iterate its output as `(stdout, stderr, pty)` tuples, `wait()` for
    the result, `kill()` it, or feed its stdin. The output stream is opened lazily."""

    def __init__(
        self,
        sandbox_id: str,
        pid: int,
        http: SyncHttp,
        stream: SyncExecStream | None = None,
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
        self._pump: threading.Thread | None = None
        self._pump_error: BaseException | None = None
        self._lock = threading.Lock()

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
        return self._pump is not None and not self._pump.is_alive()

    def _ensure_stream(self) -> SyncExecStream:
        with self._lock:
            if self._stream is None:
                if self._out.result is not None:
                    raise ProcessNotFoundError(f"process {self._pid} has ended", status=404)
                self._stream = SyncExecStream.open(
                    self._http.config, self._sandbox_id, _frames.attach(self._pid), self._pid
                )
            return self._stream

    def __iter__(self) -> Iterator[OutputTuple]:
        stream = self._ensure_stream()
        try:
            for ev in stream.events():
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
            self.disconnect()

    def _consume(
        self, on_stdout: OnText | None, on_stderr: OnText | None, on_pty: OnBytes | None
    ) -> None:
        for out, err, pty in self:
            if out is not None and on_stdout:
                on_stdout(out)
            elif err is not None and on_stderr:
                on_stderr(err)
            elif pty is not None and on_pty:
                on_pty(pty)

    def start_pump(
        self,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_pty: OnBytes | None = None,
    ) -> None:
        """Deliver output to callbacks from a background thread as it arrives."""

        def run() -> None:
            try:
                self._consume(on_stdout, on_stderr, on_pty)
            except BaseException as e:  # handed to wait(), which re-raises it in the caller
                self._pump_error = e

        self._ensure_stream()
        self._pump = threading.Thread(target=run, name=f"hutch-pid-{self._pid}", daemon=True)
        self._pump.start()

    def wait(
        self,
        on_stdout: OnText | None = None,
        on_stderr: OnText | None = None,
        on_pty: OnBytes | None = None,
        *,
        check: bool = True,
    ) -> CommandResult:
        """Block until the command ends; raise `CommandExitException` on a non-zero exit."""
        if self._pump is not None:
            self._pump.join()
            if self._pump_error is not None:
                raise self._pump_error
        elif self._out.result is None:
            try:
                self._consume(on_stdout, on_stderr, on_pty)
            except ProcessNotFoundError:
                # Ended and forgotten before we attached: ask for its recorded result instead.
                result = CommandResult.from_exec(
                    self._http.send(_ops.wait_process(self._sandbox_id, self._pid))
                )
                return check_result(result) if check else result
        assert self._out.result is not None
        return check_result(self._out.result) if check else self._out.result

    def kill(self) -> bool:
        """SIGKILL the command; False if it was already gone."""
        try:
            self._http.send(_ops.signal_process(self._sandbox_id, self._pid, 9))
        except ProcessNotFoundError:
            return False
        return True

    def send_stdin(self, data: str | bytes) -> None:
        """Write to the command's stdin (over the open stream if there is one)."""
        if self._stream is not None:
            self._stream.send_input(data, pty=self._pty)
        else:
            self._http.send(_ops.send_stdin(self._sandbox_id, self._pid, data))

    def close_stdin(self) -> None:
        """Send EOF to the command's stdin."""
        if self._stream is not None:
            self._stream.send_control(_frames.close_stdin())
        else:
            self._http.send(_ops.send_stdin(self._sandbox_id, self._pid, "", eof=True))

    def disconnect(self) -> None:
        """Stop receiving output; the process keeps running (reconnect with `connect(pid)`)."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


class Commands:
    """Run and manage commands in one sandbox."""

    def __init__(self, sandbox_id: str, http: SyncHttp) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    def run(
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
    def run(
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
    ) -> CommandHandle: ...

    def run(
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
    ) -> CommandResult | CommandHandle:
        """Run `cmd` (a shell string, or an argv list) and return its `CommandResult`; a
        non-zero exit raises `CommandExitException`. With callbacks, output is streamed to
        them as it is produced. `background=True` returns a `CommandHandle` at once."""
        req = _ops.exec_request(
            cmd, envs=envs, cwd=cwd, user=user, timeout=timeout, stdin=stdin, background=background
        )
        if background:
            info: ProcessInfo = self._http.send(
                _ops.exec_call(self._sandbox_id, req, request_timeout)
            )
            handle = CommandHandle(self._sandbox_id, info.pid, self._http)
            if on_stdout or on_stderr:
                handle.start_pump(on_stdout, on_stderr)
            return handle
        if on_stdout or on_stderr:
            handle = self._stream(req)
            try:
                if req.stdin is None:  # as without callbacks: the command reads end-of-input
                    handle.close_stdin()
                return handle.wait(on_stdout, on_stderr)
            except BaseException:
                # Interrupted, or a callback raised: the command dies with the call.
                if handle.exit_code is None:
                    with contextlib.suppress(Exception):
                        handle.kill()
                raise
        rt = self._http.config.request_timeout if request_timeout is None else request_timeout
        result = self._http.send(_ops.exec_call(self._sandbox_id, req, rt))
        return check_result(CommandResult.from_exec(result))

    def _stream(self, req: ExecRequest, pty: bool = False) -> CommandHandle:
        stream = SyncExecStream.open(self._http.config, self._sandbox_id, _frames.start(req))
        return CommandHandle(self._sandbox_id, stream.pid, self._http, stream, pty=pty)

    def list(self) -> list[ProcessInfo]:
        """Processes started through exec that are still tracked (running or just ended)."""
        return self._http.send(_ops.list_processes(self._sandbox_id))

    def connect(
        self, pid: int, on_stdout: OnText | None = None, on_stderr: OnText | None = None
    ) -> CommandHandle:
        """Reconnect to a background command; its buffered output is replayed first."""
        stream = SyncExecStream.open(
            self._http.config, self._sandbox_id, _frames.attach(pid), attach_pid=pid
        )
        handle = CommandHandle(self._sandbox_id, pid, self._http, stream)
        if on_stdout or on_stderr:
            handle.start_pump(on_stdout, on_stderr)
        return handle

    def kill(self, pid: int) -> bool:
        """SIGKILL a command; False if there was no such process."""
        return CommandHandle(self._sandbox_id, pid, self._http).kill()

    def send_stdin(self, pid: int, data: str | bytes, eof: bool = False) -> None:
        """Write to a background command's stdin (and close it if `eof`)."""
        self._http.send(_ops.send_stdin(self._sandbox_id, pid, data, eof=eof))
