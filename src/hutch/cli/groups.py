"""Where the CLI's command groups are attached to the app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach every command group; each group module owns its own commands."""
    from hutch.cli import serve

    serve.register(app)
