"""Processes started in sandboxes: output pumps, replay buffers, subscribers, waits."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal as _signal
import struct
import termios
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hutch.models import (
    ErrorCode,
    ExecRequest,
    ExecResult,
    HutchError,
    ProcessInfo,
    PtySize,
    Stream,
)
from hutch.models.exec import exit_code_for
from hutch.runtime.base import ExitStatus, ExitWaiter, ProcessStdio, Runtime, SandboxPlan

REPLAY_BYTES = 1024 * 1024  # per process, for clients that reconnect
ONESHOT_MAX_BYTES = 32 * 1024 * 1024  # per stream, for one-shot JSON results
READ_CHUNK = 64 * 1024
EXIT_DRAIN_S = 0.1  # after exit, how long to wait for output still held by grandchildren
# Output nobody reads (a full replay buffer and no subscriber, or a subscriber far behind) is
# read at most one chunk per THROTTLE_S: a command flooding stdout then mostly waits on its
# pipe instead of making the runner spend a host CPU outside every cgroup.
THROTTLE_S = 0.05
SUBSCRIBER_BACKLOG = 256

Frame = tuple[Stream, bytes] | ExitStatus


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Process:
    """One process and everything needed to stream it to any number of clients."""

    pid: int
    cmd: list[str]
    tag: str | None
    pty_master: int | None  # None once closed
    stdin_fd: int | None
    started_at: datetime
    timed_out: bool = False
    pty: bool = False
    status: ExitStatus | None = None
    ended_at: datetime | None = None
    replay: deque[tuple[Stream, bytes]] = field(default_factory=deque)
    replay_size: int = 0
    subscribers: set[asyncio.Queue[Frame]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    open_streams: int = 0
    reader_fds: list[int] = field(default_factory=list)
    reader_streams: dict[int, tuple[Stream, bool]] = field(default_factory=dict)
    streams_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self) -> ProcessInfo:
        """Wire view."""
        st = self.status
        return ProcessInfo(
            pid=self.pid,
            cmd=self.cmd,
            tag=self.tag,
            pty=self.pty,
            running=st is None,
            exit_code=None if st is None else exit_code_for(st.code, st.signal),
            signal=None if st is None else st.signal,
            started_at=self.started_at,
        )

    def publish(self, item: Frame) -> None:
        """Record output for replay and hand it to every subscriber."""
        if not isinstance(item, ExitStatus):
            self.replay.append(item)
            self.replay_size += len(item[1])
            while self.replay_size > REPLAY_BYTES and len(self.replay) > 1:
                self.replay_size -= len(self.replay.popleft()[1])
        for q in self.subscribers:
            q.put_nowait(item)

    def subscribe(self, replay: bool) -> asyncio.Queue[Frame]:
        """A queue of frames from now on (after the buffered ones, if `replay`)."""
        q: asyncio.Queue[Frame] = asyncio.Queue()
        if replay:
            for item in self.replay:
                q.put_nowait(item)
        if self.status is not None and self.streams_closed.is_set():
            q.put_nowait(self.status)
        else:
            self.subscribers.add(q)
        return q


class ProcessTable:
    """The processes of one sandbox."""

    def __init__(self, runtime: Runtime, plan: SandboxPlan) -> None:
        self.runtime = runtime
        self.plan = plan
        self.procs: dict[int, Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, pid: int) -> Process:
        """A tracked process, or a typed error."""
        p = self.procs.get(pid)
        if p is None:
            raise HutchError(
                ErrorCode.process_not_found,
                f"no process {pid} started through exec in sandbox {self.plan.sandbox_id}",
            )
        return p

    async def start(self, req: ExecRequest, *, keep_stdin: bool) -> Process:
        """Spawn `req`; pumps its output into the process's frames until it ends."""
        loop = asyncio.get_running_loop()
        stdio = ProcessStdio(pty=req.pty)
        ours: list[int] = []
        stdin_w: int | None = None
        if req.pty is None:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            stdio.stdin, stdio.stdout, stdio.stderr = in_r, out_w, err_w
            ours = [out_r, err_r]
            stdin_w = in_w
        try:
            spawned, waiter = await self.runtime.spawn(self.plan, req, stdio)
        except BaseException:
            for fd in [*ours, *([stdin_w] if stdin_w is not None else [])]:
                os.close(fd)
            raise
        proc = Process(
            pid=spawned.pid,
            cmd=req.argv(),
            tag=req.tag,
            pty_master=spawned.pty_master,
            stdin_fd=stdin_w if req.pty is None else spawned.pty_master,
            started_at=_now(),
            pty=req.pty is not None,
        )
        self.procs[proc.pid] = proc
        if spawned.pty_master is not None:
            ours = [spawned.pty_master]
            os.set_blocking(spawned.pty_master, False)
        streams = [Stream.pty] if req.pty else [Stream.stdout, Stream.stderr]
        proc.open_streams = len(ours)
        proc.reader_fds = list(ours)
        for fd, stream in zip(ours, streams, strict=True):
            if fd != spawned.pty_master:
                os.set_blocking(fd, False)
            proc.reader_streams[fd] = (stream, fd == spawned.pty_master)
            loop.add_reader(fd, self._pump, proc, fd, stream, fd == spawned.pty_master)
        if req.stdin is not None and stdin_w is not None:
            self._spawn_task(self._feed(proc, req.stdin.encode()))
        elif not keep_stdin and stdin_w is not None:
            os.close(stdin_w)
            proc.stdin_fd = None
        self._spawn_task(self._watch(proc, waiter, req.timeout_s))
        return proc

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pump(self, proc: Process, fd: int, stream: Stream, is_pty: bool) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the PTY's last slave closed
            data = b""
        if data:
            proc.publish((stream, data))
            if self._flooded(proc):
                loop = asyncio.get_running_loop()
                loop.remove_reader(fd)
                loop.call_later(THROTTLE_S, self._resume, proc, fd)
            return
        asyncio.get_running_loop().remove_reader(fd)
        proc.reader_fds.remove(fd)
        if not is_pty:
            os.close(fd)
        proc.open_streams -= 1
        if proc.open_streams <= 0:
            proc.streams_closed.set()

    @staticmethod
    def _flooded(proc: Process) -> bool:
        if not proc.subscribers:
            # publish() trims the buffer to at most REPLAY_BYTES, so "full" means within a chunk
            return proc.replay_size >= REPLAY_BYTES - READ_CHUNK
        return any(q.qsize() > SUBSCRIBER_BACKLOG for q in proc.subscribers)

    def _resume(self, proc: Process, fd: int) -> None:
        if fd in proc.reader_fds and fd in proc.reader_streams:
            stream, is_pty = proc.reader_streams[fd]
            asyncio.get_running_loop().add_reader(fd, self._pump, proc, fd, stream, is_pty)

    async def _feed(self, proc: Process, data: bytes) -> None:
        with contextlib.suppress(OSError):
            await self.write_stdin(proc, data)
        self.close_stdin(proc)

    async def write_stdin(self, proc: Process, data: bytes) -> None:
        """Write to the process's stdin (or PTY), waiting while its pipe is full."""
        fd = proc.stdin_fd
        if fd is None:
            raise HutchError(ErrorCode.conflict, f"stdin of process {proc.pid} is closed")
        if proc.pty_master is None:
            os.set_blocking(fd, False)
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)

    async def resize(self, proc: Process, size: PtySize) -> None:
        """Resize a PTY process's terminal (the runtime adds what its kernel needs)."""
        if proc.pty_master is None:
            raise HutchError(ErrorCode.conflict, f"process {proc.pid} has no terminal")
        fcntl.ioctl(
            proc.pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0)
        )
        await self.runtime.resize(self.plan, proc.pid, size)

    def close_stdin(self, proc: Process) -> None:
        """Send EOF (for a PTY: ^D)."""
        if proc.pty_master is not None:
            with contextlib.suppress(OSError):
                os.write(proc.pty_master, b"\x04")
            return
        if proc.stdin_fd is not None:
            os.close(proc.stdin_fd)
            proc.stdin_fd = None

    async def _watch(self, proc: Process, waiter: ExitWaiter, timeout_s: float | None) -> None:
        try:
            status = await asyncio.wait_for(waiter.wait(), timeout_s)
        except TimeoutError:
            proc.timed_out = True
            with contextlib.suppress(HutchError):
                await self.runtime.signal(self.plan, proc.pid, _signal.SIGKILL)
            try:
                status = await asyncio.wait_for(waiter.wait(), 5)
            except (TimeoutError, ConnectionError):
                status = ExitStatus(code=None, signal=_signal.SIGKILL)
        except ConnectionError:
            status = ExitStatus(code=None, signal=_signal.SIGKILL)
        # Output written just before exit may still be in the pipe; grandchildren that keep
        # the pipe open (daemons) must not hold the result back for long.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.streams_closed.wait(), EXIT_DRAIN_S)
        self._close_fds(proc)
        proc.status = status
        proc.ended_at = _now()
        proc.streams_closed.set()
        proc.publish(status)
        proc.subscribers.clear()
        proc.done.set()

    def _close_fds(self, proc: Process) -> None:
        loop = asyncio.get_running_loop()
        for fd in proc.reader_fds:  # still held open by something the command left running
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            if fd != proc.pty_master:
                with contextlib.suppress(OSError):
                    os.close(fd)
        proc.reader_fds = []
        if proc.pty_master is not None:
            with contextlib.suppress(OSError):
                os.close(proc.pty_master)
            proc.pty_master = None
            proc.stdin_fd = None
        elif proc.stdin_fd is not None:
            with contextlib.suppress(OSError):
                os.close(proc.stdin_fd)
            proc.stdin_fd = None

    async def wait_result(self, proc: Process) -> ExecResult:
        """Wait for the end and collect the replayed output into a result."""
        await proc.done.wait()
        return self.result(proc)

    def result(
        self, proc: Process, collected: list[tuple[Stream, bytes]] | None = None
    ) -> ExecResult:
        """An ExecResult from the collected (or replay-buffered) output."""
        assert proc.status is not None and proc.ended_at is not None
        out, err = bytearray(), bytearray()
        for stream, data in collected if collected is not None else proc.replay:
            buf = err if stream == Stream.stderr else out
            if len(buf) < ONESHOT_MAX_BYTES:
                buf += data[: ONESHOT_MAX_BYTES - len(buf)]
        st = proc.status
        return ExecResult(
            pid=proc.pid,
            exit_code=exit_code_for(st.code, st.signal),
            signal=st.signal,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            timed_out=proc.timed_out,
            started_at=proc.started_at,
            ended_at=proc.ended_at,
        )

    async def run(self, req: ExecRequest) -> ExecResult:
        """One-shot: run to the end and return everything it printed."""
        proc = await self.start(req, keep_stdin=False)
        q = proc.subscribe(replay=True)
        collected: list[tuple[Stream, bytes]] = []
        size = 0
        while True:
            item = await q.get()
            if isinstance(item, ExitStatus):
                break
            collected.append(item)
            size += len(item[1])
            if size >= 2 * ONESHOT_MAX_BYTES:
                # Enough kept; from here on the output is throttled, not collected.
                proc.subscribers.discard(q)
                await proc.done.wait()
                break
        self.forget(proc.pid)
        return self.result(proc, collected)

    def forget(self, pid: int) -> None:
        """Stop tracking an ended process."""
        p = self.procs.get(pid)
        if p is not None and p.status is not None:
            del self.procs[pid]

    def prune(self, keep: int = 256) -> None:
        """Drop the oldest ended processes beyond `keep` (their output stays until then)."""
        ended = sorted(
            (p for p in self.procs.values() if p.ended_at is not None),
            key=lambda p: p.ended_at or p.started_at,
        )
        for p in ended[: max(0, len(ended) - keep)]:
            self.procs.pop(p.pid, None)

    def close(self) -> None:
        """The sandbox is gone: release every fd and wake every waiter."""
        for proc in list(self.procs.values()):
            if proc.status is None:
                self._close_fds(proc)
        for t in list(self._tasks):
            t.cancel()
