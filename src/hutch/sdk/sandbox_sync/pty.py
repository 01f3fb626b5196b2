"""`sandbox.pty` (blocking): interactive terminals inside a sandbox."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from hutch.models.exec import PtySize
from hutch.sdk import _frames, _ops
from hutch.sdk._http import SyncHttp
from hutch.sdk._ws import SyncExecStream
from hutch.sdk.sandbox_sync.commands import CommandHandle, OnBytes
from hutch.sdk.types import CommandResult

DEFAULT_SHELL = ["/bin/bash", "-i", "-l"]
PTY_ENV = {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def pty_envs(envs: dict[str, str] | None) -> dict[str, str]:
    """Terminal defaults, overridable by the caller."""
    return {**PTY_ENV, **(envs or {})}


class PtyHandle(CommandHandle):
    """A process attached to a pseudo-terminal: keystrokes in, terminal output out."""

    def send_stdin(self, data: str | bytes) -> None:
        """Type into the terminal."""
        self._ensure_stream().send_input(data, pty=True)

    def resize(self, size: PtySize) -> None:
        """Tell the terminal its new size (send on SIGWINCH)."""
        self._ensure_stream().send_control(_frames.resize(size.cols, size.rows))

    def wait(
        self,
        on_stdout: object = None,
        on_stderr: object = None,
        on_pty: OnBytes | None = None,
        *,
        check: bool = False,
    ) -> CommandResult:
        """Block until the terminal's process ends; a non-zero exit is not an error here."""
        return super().wait(None, None, on_pty, check=check)


class Pty:
    """Create and reconnect to terminals in one sandbox."""

    def __init__(self, sandbox_id: str, http: SyncHttp) -> None:
        self._sandbox_id = sandbox_id
        self._http = http
        # Terminals this object opened, so send_stdin/resize by pid reuse their stream.
        self._open: weakref.WeakValueDictionary[int, PtyHandle] = weakref.WeakValueDictionary()

    def create(
        self,
        size: PtySize | None = None,
        on_data: OnBytes | None = None,
        *,
        cmd: str | list[str] | None = None,
        cwd: str | None = None,
        envs: dict[str, str] | None = None,
        user: str = "user",
        timeout: float | None = None,
    ) -> PtyHandle:
        """Start a login shell (or `cmd`) on a terminal of `size`; `on_data` receives output
        bytes from a background thread as they arrive."""
        req = _ops.exec_request(
            cmd or DEFAULT_SHELL,
            envs=pty_envs(envs),
            cwd=cwd,
            user=user,
            timeout=timeout,
            pty=size or PtySize(),
        )
        stream = SyncExecStream.open(self._http.config, self._sandbox_id, _frames.start(req))
        handle = PtyHandle(self._sandbox_id, stream.pid, self._http, stream, pty=True)
        if on_data is not None:
            handle.start_pump(on_pty=on_data)
        self._open[handle.pid] = handle
        return handle

    def connect(self, pid: int, on_data: OnBytes | None = None) -> PtyHandle:
        """Reattach to a running terminal."""
        stream = SyncExecStream.open(
            self._http.config, self._sandbox_id, _frames.attach(pid), attach_pid=pid
        )
        handle = PtyHandle(self._sandbox_id, pid, self._http, stream, pty=True)
        if on_data is not None:
            handle.start_pump(on_pty=on_data)
        self._open[handle.pid] = handle
        return handle

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Type into terminal `pid` (as `handle.send_stdin`)."""
        self._on_terminal(pid, lambda h: h.send_stdin(data))

    def resize(self, pid: int, size: PtySize) -> None:
        """Give terminal `pid` a new size (as `handle.resize`)."""
        self._on_terminal(pid, lambda h: h.resize(size))

    def _on_terminal(self, pid: int, act: Callable[[PtyHandle], None]) -> None:
        """`act` on terminal `pid`: through the handle this object opened, else attached for
        the moment."""
        handle = self._open.get(pid)
        if handle is not None:
            act(handle)
            return
        handle = self.connect(pid)
        try:
            act(handle)
        finally:
            handle.disconnect()

    def kill(self, pid: int) -> bool:
        """SIGKILL the terminal's process; False if it was already gone."""
        return PtyHandle(self._sandbox_id, pid, self._http).kill()
