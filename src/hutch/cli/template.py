"""`hutch template ls | build`. Listing asks the API; `--local` and `build` use the template
store on this machine directly (building needs root: it makes a root file system)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from hutch.cli import _common as c
from hutch.config import RunnerSettings
from hutch.models.common import HutchError
from hutch.sdk.client import Hutch

app = typer.Typer(help="Templates sandboxes start from.", no_args_is_help=True)
COLUMNS = ("name", "ready", "size_bytes", "built_at", "description")
TemplateDir = Annotated[
    Path | None,
    typer.Option(
        "--template-dir",
        envvar="HUTCH_RUNNER_TEMPLATE_DIR",
        help="Local template store (default: the runner's).",
        show_default=False,
    ),
]


def _store(template_dir: Path | None) -> Any:
    try:
        mod = importlib.import_module("hutch.runtime.templates")
        store_cls = mod.TemplateStore
    except (ImportError, AttributeError):
        c.err_console().print("[red]error:[/red] this installation has no local template store")
        raise typer.Exit(c.EXIT_ERROR) from None
    return store_cls(template_dir or RunnerSettings().templates_path())


def _progress() -> AbstractContextManager[Callable[[str, float | None, str], None] | None]:
    for name in ("hutch.runtime.templates.progress", "hutch.runtime.templates"):
        try:
            factory = importlib.import_module(name).rich_progress
        except (ImportError, AttributeError):
            continue
        cm: AbstractContextManager[Any] = factory()
        return cm
    return nullcontext(None)


def _fail(e: HutchError, json_out: bool) -> typer.Exit:
    if json_out:
        c.print_json({"error": {"code": e.code.value, "status": e.status, "detail": e.detail}})
    else:
        c.err_console().print(f"[red]error:[/red] {e.detail} [dim]({e.code.value})[/dim]")
    return typer.Exit(c.EXIT_ERROR)


@app.command("ls")
@c.handle_errors
def ls(
    local: Annotated[bool, typer.Option("--local", help="Read this machine's store.")] = False,
    template_dir: TemplateDir = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """List templates and whether they are built."""
    if local:
        try:
            items = _store(template_dir).list()
        except HutchError as e:
            raise _fail(e, json_out) from None
    else:
        with Hutch(config=c.config(api_url, api_key)) as h:
            items = h.list_templates()
    if json_out:
        c.print_json(items)
    else:
        c.print_table(items, COLUMNS)


@app.command("build")
@c.handle_errors
def build(
    name: Annotated[str, typer.Argument(help="Template to build, e.g. base.")] = "base",
    force: Annotated[bool, typer.Option(help="Rebuild even if already built.")] = False,
    template_dir: TemplateDir = None,
    json_out: c.Json = False,
) -> None:
    """Build a template on this machine (needs root)."""
    if os.geteuid() != 0:
        c.err_console().print(
            "[red]error:[/red] building a template needs root (it creates a root file system)"
        )
        raise typer.Exit(c.EXIT_ERROR)
    store = _store(template_dir)
    try:
        with nullcontext(None) if json_out else _progress() as progress:
            info = store.build(name, progress, force=force)
    except HutchError as e:
        raise _fail(e, json_out) from None
    if json_out:
        c.print_json(info)
    else:
        c.err_console().print(f"[green]built[/green] {name}")
