"""A rich progress display for template builds, for the CLI: one bar per build phase."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from hutch.runtime.templates.recipe import ProgressCallback

PHASE_LABELS = {
    "wait": "Waiting",
    "indices": "Package lists",
    "download": "Downloading",
    "extract": "Extracting",
    "install": "Installing",
    "customize": "Customizing",
    "verify": "Checking",
    "finalize": "Finishing",
}
_MESSAGE_WIDTH = 48


@contextlib.contextmanager
def rich_progress(
    console: Console | None = None, transient: bool = False
) -> Iterator[ProgressCallback]:
    """Yield a progress callback that draws the build on `console` (stderr by default)."""
    columns = (
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description:<13}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[message]}"),
    )
    with Progress(*columns, console=console or Console(stderr=True), transient=transient) as bars:
        tasks: dict[str, TaskID] = {}

        def finish(task: TaskID) -> None:
            bars.update(task, total=1.0, completed=1.0, message="")

        def callback(phase: str, fraction: float | None, message: str) -> None:
            text = escape(message[:_MESSAGE_WIDTH])
            task = tasks.get(phase)
            if task is None:
                for earlier in tasks.values():
                    finish(earlier)
                label = PHASE_LABELS.get(phase, phase.capitalize())
                total = None if fraction is None else 1.0
                task = bars.add_task(label, total=total, message=text)
                tasks[phase] = task
            if fraction is None:
                bars.update(task, message=text)
            else:
                bars.update(task, total=1.0, completed=min(max(fraction, 0.0), 1.0), message=text)

        yield callback
        for task in tasks.values():
            finish(task)
