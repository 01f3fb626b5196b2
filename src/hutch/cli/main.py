"""`hutch` — the typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from hutch import __version__

app = typer.Typer(help="Hutch: isolated sandboxes for AI agents.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _register() -> None:
    # Each group registers itself on `app`; imported here so the modules stay independent.
    from hutch.cli import groups

    groups.register(app)


_register()

if __name__ == "__main__":
    app()
