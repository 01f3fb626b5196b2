"""Stop a program with Ctrl-C once its command in a sandbox runs, then make sure that command
is gone: shared by the SDK's and the CLI's tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def marked_command() -> tuple[str, str]:
    """A shell command that says "started" and then sleeps, and the shell snippet that counts
    its processes (the shell and its child both name the duration; the pattern does not match
    its own command line)."""
    secs = f"600.{os.getpid()}{time.monotonic_ns() % 10_000}"
    count = f"grep -l '{secs[:-1]}[{secs[-1]}]' /proc/[0-9]*/cmdline | wc -l"
    return f"echo started; sleep {secs}; true", count


def interrupt_when_started(argv: list[str]) -> int:
    """Run `argv` until it prints "started", send it SIGINT; its exit status."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()


def wait_until_gone(count: Callable[[], str], deadline_s: float = 10.0) -> None:
    """Poll `count()` (processes left, as printed by the counting snippet) until it is 0."""
    deadline = time.monotonic() + deadline_s
    while (left := count().strip()) != "0":
        assert time.monotonic() < deadline, f"{left} processes of the command still run"
        time.sleep(0.2)
