"""Processes inside a gVisor sandbox: `runsc exec`, exit statuses, signals and terminals.

Facts about runsc 20221219 this module is built on (checked by hand and by the tests):
- `runsc exec` returns the process's exit code, or 128+N when signal N killed it; it does not
  forward signals it receives, so signals go through `runsc kill --pid` or an in-sandbox `kill`.
- `--console-socket` is honoured only with `--detach`; without it, a process spec with
  `terminal: true` uses the PTY slave runsc is given as stdio, which is what we do.
- Host TIOCSWINSZ on the master does not reach the sandbox's processes as SIGWINCH; we send it.
- Each exec'd process leads its own session and process group (pgid == pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal as signals
import struct
import termios
from dataclasses import dataclass, field
from typing import Any

from hutch.models import ErrorCode, HutchError, PtySize
from hutch.runtime.base import ExitStatus, ExitWaiter, ProcessStdio, SpawnedProcess
from hutch.runtime.gvisor.runsc import Runsc, RunscError, clean_message, read_available

START_TIMEOUT_S = 30.0

# runsc reports "killed by N" as 128+N, like a shell; a plain `exit 139` looks the same. These
# signals are only believed when we sent them, or when nothing else produces them in practice.
_ALWAYS_SIGNAL = {
    signals.SIGKILL,
    signals.SIGSEGV,
    signals.SIGABRT,
    signals.SIGBUS,
    signals.SIGILL,
    signals.SIGFPE,
    signals.SIGSYS,
}


@dataclass
class Tracked:
    """One running `runsc exec` and what we know about the process it started."""

    pid: int
    proc: asyncio.subprocess.Process
    pty: int | None  # our own dup of the master, for resizes; closed at exit
    caller_master: int | None = None  # handed to the runner, which owns and closes it
    sent: set[int] = field(default_factory=set)
    done: asyncio.Task[ExitStatus] | None = None


def status_from_returncode(rc: int, sent: set[int]) -> ExitStatus:
    """Turn `runsc exec`'s exit code into an ExitStatus."""
    if rc < 0:  # runsc itself was killed on the host; the process's fate is unknown
        return ExitStatus(code=None, signal=-rc)
    if 128 < rc <= 128 + 64:
        sig = rc - 128
        if sig in sent or sig in _ALWAYS_SIGNAL:
            return ExitStatus(code=None, signal=sig)
    return ExitStatus(code=rc)


class RunscExitWaiter(ExitWaiter):
    """Resolves with the exit status of one `runsc exec`."""

    def __init__(self, tracked: Tracked) -> None:
        self._tracked = tracked

    async def wait(self) -> ExitStatus:
        """Wait for the process to end."""
        assert self._tracked.done is not None
        return await asyncio.shield(self._tracked.done)


def set_winsize(fd: int, size: PtySize) -> None:
    """TIOCSWINSZ on a terminal fd."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("hutch-process", 0)  # inherited on purpose: runsc reads it by path
    os.write(fd, data)
    return fd


async def _wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def spawn(
    runsc: Runsc, container_id: str, spec: dict[str, Any], stdio: ProcessStdio
) -> Tracked:
    """Start `spec` with `runsc exec`; return once the in-sandbox pid is known.

    Takes ownership of the stdio fds. Raises HutchError(exec_failed) when runsc cannot start
    the process (missing executable or cwd, sandbox gone), with runsc's reason.
    """
    to_close: list[int] = []
    master: int | None = None
    dup_master: int | None = None
    try:
        if stdio.pty is not None:
            master, slave = os.openpty()
            to_close.append(slave)
            set_winsize(master, stdio.pty)
            std: tuple[int, int, int] = (slave, slave, slave)
            # The caller closes whatever it passed even in PTY mode.
            to_close += [fd for fd in (stdio.stdin, stdio.stdout, stdio.stderr) if fd is not None]
        else:
            devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            to_close.append(devnull)
            std = (
                stdio.stdin if stdio.stdin is not None else devnull,
                stdio.stdout if stdio.stdout is not None else devnull,
                stdio.stderr if stdio.stderr is not None else devnull,
            )
            to_close += [fd for fd in (stdio.stdin, stdio.stdout, stdio.stderr) if fd is not None]
        spec_fd = _memfd(json.dumps(spec).encode())
        to_close.append(spec_fd)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        to_close += [pid_w, log_w]
        args = runsc.global_args()
        argv = [
            args[0],
            f"--log-fd={log_w}",
            *args[1:],
            "exec",
            f"--process=/proc/self/fd/{spec_fd}",
            f"--internal-pid-file=/proc/self/fd/{pid_w}",
            container_id,
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=std[0],
                stdout=std[1],
                stderr=std[2],
                pass_fds=(spec_fd, pid_w, log_w),
                start_new_session=True,
            )
        except OSError as e:
            os.close(pid_r)
            os.close(log_r)
            raise HutchError(ErrorCode.exec_failed, f"cannot run runsc: {e.strerror}") from e
    finally:
        for fd in to_close:
            with contextlib.suppress(OSError):
                os.close(fd)
    try:
        pid = await _await_pid(proc, pid_r, log_r)
        if master is not None:
            dup_master = os.dup(master)
    except BaseException:
        if master is not None:
            os.close(master)
        raise
    finally:
        os.close(pid_r)
        os.close(log_r)
    tracked = Tracked(pid=pid, proc=proc, pty=dup_master, caller_master=master)
    tracked.done = asyncio.create_task(_reap(tracked))
    return tracked


async def _await_pid(proc: asyncio.subprocess.Process, pid_r: int, log_r: int) -> int:
    readable = asyncio.create_task(_wait_readable(pid_r))
    exited = asyncio.create_task(proc.wait())
    try:
        done, _ = await asyncio.wait(
            {readable, exited}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        readable.cancel()
    if not done:
        proc.kill()
        await proc.wait()
        raise HutchError(ErrorCode.exec_failed, "the sandbox did not start the process in time")
    # A quick process may have been started and finished already: the pid is then in the pipe.
    raw = read_available(pid_r).strip()
    if raw.isdigit():
        if not exited.done():
            exited.cancel()
        return int(raw)
    await exited
    reason = clean_message(read_available(log_r)) or f"runsc exec exited with {proc.returncode}"
    raise HutchError(ErrorCode.exec_failed, f"could not start the process: {reason}")


async def _reap(tracked: Tracked) -> ExitStatus:
    try:
        rc = await tracked.proc.wait()
    finally:
        if tracked.pty is not None:
            os.close(tracked.pty)
            tracked.pty = None
    return status_from_returncode(rc, tracked.sent)


async def _in_sandbox_sh(runsc: Runsc, container_id: str, script: str) -> bool:
    """Run a tiny root shell script inside the sandbox; whether it exited 0."""
    try:
        await runsc.run("exec", "--user=0:0", container_id, "/bin/sh", "-c", script, timeout=15)
    except RunscError:
        return False
    return True


async def signal_group(runsc: Runsc, container_id: str, tracked: Tracked, sig: int) -> None:
    """Send `sig` to the process's group from inside the sandbox, and to the process itself
    through runsc (which works even if the sandbox's /bin/sh is broken)."""
    tracked.sent.add(sig)
    if tracked.proc.returncode is not None:
        return
    pid = tracked.pid
    await _in_sandbox_sh(runsc, container_id, f"kill -s {sig} -- -{pid} 2>/dev/null; true")
    if tracked.proc.returncode is None:
        with contextlib.suppress(RunscError):
            await runsc.run("kill", f"--pid={pid}", container_id, str(sig), timeout=15)


# Every process of the terminal's session gets SIGWINCH: the sandbox kernel does not expose the
# foreground group of a host terminal, and processes that do not care ignore SIGWINCH anyway.
_WINCH_SCRIPT = (
    'for f in /proc/[0-9]*/stat; do {{ read -r l < "$f"; }} 2>/dev/null || continue; '
    'set -- ${{l##*) }}; [ "$4" = "{sid}" ] || continue; p=${{f#/proc/}}; '
    'kill -s WINCH "${{p%/stat}}" 2>/dev/null; done; true'
)


async def resize(runsc: Runsc, container_id: str, tracked: Tracked, size: PtySize) -> None:
    """Resize the terminal and tell the session's processes."""
    if tracked.pty is None:
        raise HutchError(ErrorCode.invalid_request, "the process has no terminal")
    set_winsize(tracked.pty, size)
    ok = await _in_sandbox_sh(runsc, container_id, _WINCH_SCRIPT.format(sid=tracked.pid))
    if not ok:
        with contextlib.suppress(RunscError):
            await runsc.run("kill", f"--pid={tracked.pid}", container_id, "WINCH", timeout=15)


def spawned(tracked: Tracked) -> SpawnedProcess:
    """The SpawnedProcess handed to the runner."""
    return SpawnedProcess(pid=tracked.pid, pty_master=tracked.caller_master)
