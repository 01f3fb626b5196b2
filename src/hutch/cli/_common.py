"""What every command group shares: the --api-url/--api-key/--json options, error reporting
with exit codes, JSON and table output, and small argument parsers."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from hutch.sdk.client import Hutch
from hutch.sdk.config import ENV_API_KEY, ENV_API_URL, ConnectionConfig
from hutch.sdk.exceptions import HutchSDKError, InvalidRequestError

ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar=ENV_API_URL, help="API base URL.", show_default=False),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar=ENV_API_KEY, help="API key.", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

EXIT_ERROR = 1
EXIT_USAGE = 2

P = ParamSpec("P")
R = TypeVar("R")


def config(api_url: str | None, api_key: str | None) -> ConnectionConfig:
    """Connection settings from the options (which typer already filled from the env)."""
    try:
        return ConnectionConfig.resolve(api_url, api_key)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--api-url") from None


def err_console() -> Console:
    """Where messages for humans go (stderr, so stdout stays clean for scripts)."""
    return Console(stderr=True, highlight=False)


def _error_payload(e: HutchSDKError) -> dict[str, Any]:
    return {
        "error": {
            "code": e.code,
            "status": e.status,
            "detail": e.detail,
            "errors": e.errors or None,
        }
    }


def describe_invalid(e: Exception) -> str:
    """A one-line account of what was invalid, e.g. `vcpu: Input should be ... 16`."""
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in e.errors()
        )
    return str(e)


def out_console() -> Console:
    """Where tables go; wide when piped so columns are not cut for `grep` and friends."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report SDK errors as `error: detail (code)` (or JSON with --json) and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("json_out"))
        try:
            return fn(*args, **kwargs)
        except HutchSDKError as e:
            if as_json:
                typer.echo(json.dumps(_error_payload(e)), err=True)
            else:
                msg = f"[red]error:[/red] {e.detail}"
                if e.code:
                    msg += f" [dim]({e.code})[/dim]"
                con = err_console()
                con.print(msg)
                for fe in e.errors:
                    loc = ".".join(str(p) for p in fe.get("loc", []))
                    con.print(f"  {loc}: {fe.get('msg', '')}")
            # Refused by the SDK before anything was sent: a usage error, like bad options.
            local = isinstance(e, InvalidRequestError) and e.status is None
            raise typer.Exit(EXIT_USAGE if local else EXIT_ERROR) from None
        except OSError as e:
            # A local file (cp's source or destination, a --stdin that cannot be read).
            where = f": {e.filename}" if e.filename else ""
            detail = f"{e.strerror or e}{where}"
            if as_json:
                payload = {"error": {"code": "local_error", "status": None, "detail": detail}}
                typer.echo(json.dumps(payload), err=True)
            else:
                err_console().print("error: " + detail, markup=False, style="red")
            raise typer.Exit(EXIT_ERROR) from None
        except (ValidationError, ValueError) as e:
            # Local validation (sizes, env names, paths) before anything was sent.
            detail = describe_invalid(e)
            if as_json:
                payload = {"error": {"code": "invalid_request", "status": None, "detail": detail}}
                typer.echo(json.dumps(payload), err=True)
            else:
                err_console().print("error: " + detail, markup=False, style="red")
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


GROUP_OPTIONS = ("api_url", "api_key", "json_out")


def _on_command_line(ctx: Any, name: str) -> bool:
    # By name: typer may bring its own copy of click, with its own ParameterSource enum.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def group_options(fn: Callable[P, R]) -> Callable[P, R]:
    """Let a subcommand use the --api-url/--api-key/--json given to its group, as in
    `hutch me --api-key K export`: its own options win, then the group's, then the environment.
    The subcommand takes a `ctx: typer.Context` parameter for this; put the decorator above
    `handle_errors`, so errors are reported in the format the group asked for."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx: Any = kwargs.get("ctx")
        group = getattr(ctx, "parent", None)
        if group is not None:
            for name in GROUP_OPTIONS:
                if (
                    name in kwargs
                    and not _on_command_line(ctx, name)
                    and _on_command_line(group, name)
                ):
                    kwargs[name] = group.params[name]
        return fn(*args, **kwargs)

    return wrapper


def to_jsonable(value: Any) -> Any:
    """Models, dataclasses and lists of them as plain JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    typer.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items())
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(getattr(v, "value", v))


def print_table(rows: Iterable[Any], columns: Sequence[str], title: str | None = None) -> None:
    """A table of the given columns (missing keys show empty) on stdout."""
    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c)
    n = 0
    for row in rows:
        raw = row if isinstance(row, dict) else {c: getattr(row, c, None) for c in columns}
        table.add_row(*(_cell(raw.get(c)) for c in columns))
        n += 1
    out_console().print(table if n else "[dim]nothing to show[/dim]")


def parse_kv(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """`KEY=VALUE` options (e.g. --env, --metadata) as a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} must look like KEY=VALUE", param_hint=what)
        out[key] = value
    return out


_REMOTE = re.compile(r"^(?P<sbx>[A-Za-z0-9][A-Za-z0-9_-]*):(?P<path>/.*)$")


@dataclass(frozen=True)
class Location:
    """One side of `hutch sandbox cp`: a host path, or `SBX:/path` inside a sandbox."""

    path: str
    sandbox_id: str | None = None

    @property
    def remote(self) -> bool:
        """Whether this is inside a sandbox."""
        return self.sandbox_id is not None


def parse_location(arg: str) -> Location:
    """`sbx_…:/abs/path` is a sandbox path; anything else is a host path (write `./a:/b` for a
    host file whose name has a colon)."""
    m = _REMOTE.match(arg)
    if m:
        return Location(m.group("path"), m.group("sbx"))
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*:[^/]", arg):
        raise typer.BadParameter(
            f"{arg!r}: a sandbox path must be absolute, e.g. SBX:/home/user/file",
            param_hint="cp",
        )
    if not arg:
        raise typer.BadParameter("empty path", param_hint="cp")
    return Location(arg)


def stdout_is_tty() -> bool:
    """Whether stdout is a terminal (tables and progress only then)."""
    return sys.stdout.isatty()


def admin_client(api_url: str | None, api_key: str | None) -> Hutch:
    """The SDK's account and key client, configured from the options or the environment."""
    return Hutch(config=config(api_url, api_key))


def show(value: Any, json_out: bool, columns: tuple[str, ...]) -> None:
    """An answer as JSON, a table of `columns` for a list, or field/value rows for one item."""
    if json_out:
        print_json(value)
    elif isinstance(value, list):
        print_table(value, columns)
    else:
        print_table([{"field": k, "value": v} for k, v in value.items()], ("field", "value"))
