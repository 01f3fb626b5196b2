"""`hutch` — typer app; sub-commands live in their own modules."""

from __future__ import annotations

import typer

from hutch import __version__

app = typer.Typer(help="Hutch: isolated sandboxes for AI agents.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
