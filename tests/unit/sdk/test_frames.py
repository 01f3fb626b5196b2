"""Exec-stream frames: what the client sends, what it accepts, and how output is gathered."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from hutch.models.exec import (
    ErrorFrame,
    ExecRequest,
    ExecResult,
    ExitFrame,
    StartedFrame,
    Stream,
)
from hutch.sdk import _frames
from hutch.sdk.exceptions import SandboxNotRunningError
from hutch.sdk.types import CommandResult


def test_control_frames_are_json() -> None:
    req = ExecRequest(cmd="echo hi", env={"A": "1"})
    start = json.loads(_frames.start(req))
    assert start["type"] == "start" and start["request"]["cmd"] == "echo hi"
    assert json.loads(_frames.attach(42)) == {"type": "attach", "pid": 42}
    assert json.loads(_frames.resize(100, 30)) == {"type": "resize", "cols": 100, "rows": 30}
    assert json.loads(_frames.signal(15)) == {"type": "signal", "signal": 15}
    assert json.loads(_frames.close_stdin()) == {"type": "close_stdin"}


def test_input_frames_name_their_stream() -> None:
    assert _frames.stdin(b"abc") == bytes([Stream.stdin]) + b"abc"
    assert _frames.stdin("é") == bytes([Stream.stdin]) + "é".encode()
    assert _frames.stdin(b"\x03", pty=True) == bytes([Stream.pty, 3])


def test_server_frames_decode() -> None:
    assert _frames.decode('{"type":"started","pid":9}') == StartedFrame(pid=9)
    ex = _frames.decode('{"type":"exit","exit_code":137,"signal":9}')
    assert ex == ExitFrame(exit_code=137, signal=9)
    assert isinstance(_frames.decode('{"type":"error","code":"x","detail":"y"}'), ErrorFrame)
    assert _frames.decode(bytes([Stream.stdout]) + b"hi") == _frames.Output("stdout", b"hi")
    assert _frames.decode(bytes([Stream.stderr])) == _frames.Output("stderr", b"")
    assert _frames.decode(bytes([Stream.pty]) + b"\x1b[0m").stream == "pty"


@pytest.mark.parametrize("bad", ['{"type":"nope"}', "not json", b"", bytes([Stream.stdin]) + b"x"])
def test_unexpected_frames_are_protocol_errors(bad: str | bytes) -> None:
    with pytest.raises(_frames.ProtocolError):
        _frames.decode(bad)


def test_utf8_split_across_frames_is_joined() -> None:
    col = _frames.OutputCollector()
    col.pid = 5
    raw = "né😀".encode()
    parts = [raw[:2], raw[2:4], raw[4:]]  # cuts inside both multibyte characters
    seen = [col.text(_frames.Output("stdout", p))[0] for p in parts]
    assert "".join(s for s in seen if s) == "né😀"
    assert col.text(_frames.Output("stderr", b"oops")) == (None, "oops", None)
    assert col.text(_frames.Output("pty", b"\xff")) == (None, None, b"\xff")
    result = col.finish(ExitFrame(exit_code=0))
    assert result == CommandResult("né😀", "oops", 0, None, pid=5)


def test_truncated_character_becomes_replacement_at_end() -> None:
    col = _frames.OutputCollector()
    col.text(_frames.Output("stdout", "é".encode()[:1]))
    result = col.finish(ExitFrame(exit_code=1))
    assert result.stdout == "\ufffd"
    assert result.error == "exited with code 1"


def test_first_frame_must_be_started() -> None:
    assert _frames.expect_started(StartedFrame(pid=3)) == 3
    with pytest.raises(SandboxNotRunningError):
        _frames.expect_started(ErrorFrame(code="sandbox_not_running", detail="stopped"))
    with pytest.raises(_frames.ProtocolError):
        _frames.expect_started(ExitFrame(exit_code=0))


def test_results_from_one_shot_exec() -> None:
    now = datetime.now(UTC)
    r = ExecResult(
        pid=1, exit_code=137, signal=9, stdout="a", stderr="b", started_at=now, ended_at=now
    )
    cr = CommandResult.from_exec(r)
    assert (cr.exit_code, cr.signal, cr.error) == (137, 9, "killed by signal 9")
