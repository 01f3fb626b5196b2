"""The exec trail of an interactive exec stream, read from its control frames only."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool
from pydantic import TypeAdapter

from hutch.api.deps import Services
from hutch.models.exec import (
    ClientFrame,
    ErrorFrame,
    ExitFrame,
    ServerFrame,
    StartedFrame,
    StartFrame,
)
from hutch.services.permissions import Principal


class StreamAudit:
    """Reads the control frames of one audited exec stream: argv[0] from the start frame, the
    pid and exit code from the runner's frames. Output and input frames are not looked at."""

    def __init__(self, svc: Services, actor: Principal, sandbox_id: str) -> None:
        self.svc = svc
        self.project_id = actor.project_id
        self.mode = actor.mode.value
        self.sandbox_id = sandbox_id
        self.record_id: str | None = None
        self.done = False

    async def client_text(self, text: str) -> None:
        """A text frame from the client (only the first one matters)."""
        if self.record_id is not None or self.done:
            return
        try:
            frame = _CLIENT_FRAME.validate_json(text)
        except ValueError:
            return  # the runner answers bad frames itself
        if isinstance(frame, StartFrame):
            argv0 = frame.request.argv()[0]
            self.record_id = await run_in_threadpool(
                lambda: self.svc.exec_audit.start(
                    project_id=self.project_id,
                    mode=self.mode,
                    sandbox_id=self.sandbox_id,
                    argv0=argv0,
                    kind="stream",
                )
            )
        else:
            self.done = True  # attach: the command was recorded when it started

    async def runner_text(self, text: str) -> None:
        """A text frame from the runner: `started` gives the pid, `exit`/`error` the end."""
        if self.record_id is None or self.done:
            return
        try:
            frame = _SERVER_FRAME.validate_json(text)
        except ValueError:
            return
        record_id = self.record_id
        if isinstance(frame, StartedFrame):
            await run_in_threadpool(self.svc.exec_audit.set_pid, record_id, frame.pid)
        elif isinstance(frame, ExitFrame | ErrorFrame):
            self.done = True
            code = frame.exit_code if isinstance(frame, ExitFrame) else None
            await run_in_threadpool(
                lambda: self.svc.exec_audit.finish(record_id=record_id, exit_code=code)
            )

    async def close(self) -> None:
        """The stream ended without an exit frame: the end time is known, the exit code not."""
        if self.record_id is not None and not self.done:
            self.done = True
            record_id = self.record_id
            await run_in_threadpool(
                lambda: self.svc.exec_audit.finish(record_id=record_id, exit_code=None)
            )


_CLIENT_FRAME: TypeAdapter[Any] = TypeAdapter(ClientFrame)
_SERVER_FRAME: TypeAdapter[Any] = TypeAdapter(ServerFrame)
