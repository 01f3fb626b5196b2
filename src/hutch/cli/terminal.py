"""The host terminal during `hutch sandbox shell`: raw mode that is always restored, the
current size, and SIGWINCH turned into a flag the forwarding loop polls."""

from __future__ import annotations

import os
import signal
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hutch.models.exec import PtySize


def terminal_size(fd: int) -> PtySize:
    """Columns and rows of the terminal on `fd` (80x24 if it cannot be asked)."""
    try:
        sz = os.get_terminal_size(fd)
        return PtySize(cols=max(sz.columns, 1), rows=max(sz.lines, 1))
    except OSError:
        return PtySize()


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put the terminal in raw mode (keystrokes pass straight through, ^C included) and put
    it back exactly as it was on the way out, whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class WinchFlag:
    """Set by SIGWINCH; the loop calls `take()` and resizes when it returns True."""

    def __init__(self) -> None:
        self._flag = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._flag = True

    def take(self) -> bool:
        """Whether the window changed since the last call."""
        changed, self._flag = self._flag, False
        return changed

    @contextmanager
    def installed(self) -> Iterator[WinchFlag]:
        """Listen for SIGWINCH while inside the block (main thread only)."""
        old = signal.signal(signal.SIGWINCH, self._on_signal)
        try:
            yield self
        finally:
            signal.signal(signal.SIGWINCH, old)
