"""The exec stream's frames on the client side: encoding what we send, decoding what arrives,
and gathering output into a `CommandResult`. Pure logic, shared by the sync and async handles."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Literal

from pydantic import TypeAdapter

from hutch.models.exec import (
    AttachFrame,
    CloseStdinFrame,
    ErrorFrame,
    ExecRequest,
    ExitFrame,
    ResizeFrame,
    ServerFrame,
    SignalFrame,
    StartedFrame,
    StartFrame,
    Stream,
)
from hutch.sdk.exceptions import HutchSDKError, error_from_frame
from hutch.sdk.types import CommandResult

_server_frame: TypeAdapter[StartedFrame | ExitFrame | ErrorFrame] = TypeAdapter(ServerFrame)

StreamName = Literal["stdout", "stderr", "pty"]


@dataclass(frozen=True)
class Output:
    """A chunk of output from one stream, as bytes."""

    stream: StreamName
    data: bytes


Event = StartedFrame | ExitFrame | ErrorFrame | Output


class ProtocolError(HutchSDKError):
    """The server sent something the exec stream protocol does not allow."""


def start(req: ExecRequest) -> str:
    """First frame to run a command."""
    return StartFrame(request=req).model_dump_json()


def attach(pid: int) -> str:
    """First frame to reconnect to a running process."""
    return AttachFrame(pid=pid).model_dump_json()


def resize(cols: int, rows: int) -> str:
    """PTY size change."""
    return ResizeFrame(cols=cols, rows=rows).model_dump_json()


def close_stdin() -> str:
    """EOF on the process's stdin."""
    return CloseStdinFrame().model_dump_json()


def signal(sig: int) -> str:
    """Send a signal to the process."""
    return SignalFrame(signal=sig).model_dump_json()


def stdin(data: bytes | str, pty: bool = False) -> bytes:
    """A binary input frame (stdin, or PTY keystrokes)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return bytes([Stream.pty if pty else Stream.stdin]) + raw


_NAMES: dict[int, StreamName] = {
    Stream.stdout: "stdout",
    Stream.stderr: "stderr",
    Stream.pty: "pty",
}


def decode(message: str | bytes) -> Event:
    """One server message: a JSON control frame (text) or an output frame (binary)."""
    if isinstance(message, str):
        try:
            return _server_frame.validate_json(message)
        except ValueError as e:
            raise ProtocolError(f"unexpected control frame from server: {e}") from None
    if not message or message[0] not in _NAMES:
        first = message[0] if message else None
        raise ProtocolError(f"unexpected binary frame from server (stream byte {first})")
    return Output(_NAMES[message[0]], bytes(message[1:]))


class OutputCollector:
    """Decodes stdout/stderr incrementally as UTF-8 (a character may span frames) and keeps
    them for the final result; PTY output passes through as bytes."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._out = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._err = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self.result: CommandResult | None = None

    @property
    def stdout(self) -> str:
        """Everything printed on stdout so far."""
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        """Everything printed on stderr so far."""
        return "".join(self._stderr)

    def text(self, chunk: Output) -> tuple[str | None, str | None, bytes | None]:
        """(stdout, stderr, pty) for one output chunk; decoded text is also kept."""
        if chunk.stream == "pty":
            return None, None, chunk.data
        if chunk.stream == "stdout":
            s = self._out.decode(chunk.data)
            self._stdout.append(s)
            return (s or None), None, None
        s = self._err.decode(chunk.data)
        self._stderr.append(s)
        return None, (s or None), None

    def flush(self) -> tuple[str, str]:
        """Emit bytes left in the decoders (a truncated character becomes U+FFFD)."""
        out, err = self._out.decode(b"", final=True), self._err.decode(b"", final=True)
        self._stdout.append(out)
        self._stderr.append(err)
        return out, err

    def finish(self, frame: ExitFrame) -> CommandResult:
        """Record the process's end."""
        self.flush()
        self.result = CommandResult.from_exit(self.pid, self.stdout, self.stderr, frame)
        return self.result


def expect_started(event: Event) -> int:
    """The pid from a stream's first frame, or the error the server sent instead."""
    if isinstance(event, StartedFrame):
        return event.pid
    if isinstance(event, ErrorFrame):
        raise error_from_frame(event.code, event.detail)
    raise ProtocolError(f"expected a 'started' frame first, got {type(event).__name__}")


def stream_closed_early() -> HutchSDKError:
    """The server closed the stream before saying how the process ended."""
    return ProtocolError(
        "the exec stream closed before the process ended; reconnect with commands.connect(pid)"
    )
