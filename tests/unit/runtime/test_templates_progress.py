"""The rich progress renderer draws one bar per phase."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from hutch.runtime.templates.progress import rich_progress


def test_rich_progress_shows_each_phase_and_finishes() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    with rich_progress(console) as progress:
        progress("indices", None, "Retrieving InRelease")
        progress("download", 0.5, "Validating [apt] 2.6.1")
        progress("download", None, "a warning keeps the fraction")
        progress("install", 0.25, "Unpacking bash")
    text = out.getvalue()
    for label in ("Package lists", "Downloading", "Installing"):
        assert label in text
    assert "100%" in text


def test_rich_progress_does_not_swallow_errors() -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    with pytest.raises(RuntimeError), rich_progress(console) as progress:
        progress("download", 0.1, "x")
        raise RuntimeError("build failed")
