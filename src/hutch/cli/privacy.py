"""`hutch secrets` (project secrets) and `hutch me` (your account and data-subject rights)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hutch.cli import _common as c
from hutch.cli import accounts
from hutch.sdk.client import Hutch

secrets = typer.Typer(
    help="Project secrets: values are write-only and injected into sandboxes as env.",
    no_args_is_help=True,
)
me = typer.Typer(
    help="Your account: who am I, export, correct, restrict, object, erase.",
    invoke_without_command=True,
)

SECRET_COLUMNS = ("name", "version", "kek_id", "created_at", "updated_at")
STATUS_COLUMNS = ("user_id", "restricted_at", "objections", "erased_at", "purge_after")
Project = Annotated[
    str | None, typer.Option("--project", "-p", help="Project id (default: the key's).")
]
User = Annotated[str | None, typer.Option("--user", help="Act for another user (admin keys only).")]


def _project(h: Hutch, project: str | None) -> str:
    return project or str(h.me()["project"]["project_id"])


def read_secret_value(name: str) -> str:
    """The value from stdin when piped, else from a hidden prompt (never from argv)."""
    if not sys.stdin.isatty():
        value = sys.stdin.read()
        # A trailing newline from `echo` or a file is not part of the secret.
        return value[:-1] if value.endswith("\n") else value
    return str(typer.prompt(f"value for {name}", hide_input=True, confirmation_prompt=True))


# --- secrets ---


@secrets.command("set")
@c.handle_errors
def secrets_set(
    name: Annotated[str, typer.Argument(help="Secret name (letters, digits, _).")],
    project: Project = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Create or replace a secret; the value is read from stdin or a hidden prompt."""
    value = read_secret_value(name)
    with c.admin_client(api_url, api_key) as h:
        answer = h.set_secret(_project(h, project), name, value)
    if json_out:
        c.print_json(answer)
    else:
        typer.echo(f"{answer['name']}: version {answer['version']} stored")


@secrets.command("ls")
@c.handle_errors
def secrets_ls(
    project: Project = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """List secret names and metadata (never values)."""
    with c.admin_client(api_url, api_key) as h:
        items = h.list_secrets(_project(h, project))
    if json_out:
        c.print_json(items)
    else:
        c.print_table(items, SECRET_COLUMNS)


@secrets.command("rm")
@c.handle_errors
def secrets_rm(
    name: Annotated[str, typer.Argument(help="Secret name.")],
    project: Project = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Delete a secret."""
    with c.admin_client(api_url, api_key) as h:
        h.delete_secret(_project(h, project), name)
    if json_out:
        c.print_json({"name": name, "deleted": True})
    else:
        typer.echo(f"{name}: deleted")


@secrets.command("rewrap")
@c.handle_errors
def secrets_rewrap(
    rotate: Annotated[
        bool, typer.Option("--rotate", help="First make a new KEK version (local, Vault).")
    ] = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Rewrap every secret's data key under the current KEK (values are never decrypted)."""
    with c.admin_client(api_url, api_key) as h:
        answer = h.rewrap_secrets(rotate)
    if json_out:
        c.print_json(answer)
    else:
        typer.echo(
            f"KEK {answer['kek_id']}: {answer['rewrapped']} rewrapped, "
            f"{answer['already_current']} already current"
        )


# --- me ---


@me.callback()
def me_main(
    ctx: typer.Context,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Who the API key belongs to (with no subcommand). --api-url, --api-key and --json given
    here also apply to the subcommand."""
    if ctx.invoked_subcommand is None:
        accounts.me(api_url=api_url, api_key=api_key, json_out=json_out)


def _status(answer: dict[str, object], json_out: bool) -> None:
    if json_out:
        c.print_json(answer)
    else:
        c.print_table(
            [{"field": k, "value": answer.get(k)} for k in STATUS_COLUMNS], ("field", "value")
        )


@me.command("export")
@c.group_options
@c.handle_errors
def me_export(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Zip file (default: hutch-export-ID.zip)")
    ] = None,
    user: User = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Download everything Hutch holds about you as a zip of JSON files."""
    with c.admin_client(api_url, api_key) as h:
        data = h.export_data(user)
        if output is None:
            output = Path(f"hutch-export-{user or h.me()['user']['user_id']}.zip")
    path = output
    path.write_bytes(data)
    if json_out:
        c.print_json({"path": str(path), "bytes": len(data)})
    else:
        typer.echo(f"wrote {path} ({len(data)} bytes)")


@me.command("update")
@c.group_options
@c.handle_errors
def me_update(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    email: Annotated[str | None, typer.Option(help="New email address.")] = None,
    user: User = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Correct your name or email."""
    fields = {k: v for k, v in (("name", name), ("email", email)) if v is not None}
    if not fields:
        raise typer.BadParameter("give --name and/or --email", param_hint="--name")
    with c.admin_client(api_url, api_key) as h:
        answer = h.update_profile(user, **fields)
    c.show(answer, json_out, accounts.USER_COLUMNS)


@me.command("restrict")
@c.group_options
@c.handle_errors
def me_restrict(
    ctx: typer.Context,
    lift: Annotated[bool, typer.Option("--lift", help="Lift the restriction.")] = False,
    user: User = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Restrict processing of your account (no new sandboxes; data kept), or --lift it."""
    with c.admin_client(api_url, api_key) as h:
        _status(h.restrict(not lift, user), json_out)


@me.command("object")
@c.group_options
@c.handle_errors
def me_object(
    ctx: typer.Context,
    purposes: Annotated[
        list[str] | None,
        typer.Argument(help="exec_audit, usage_analytics, marketing (none: withdraw all)."),
    ] = None,
    user: User = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Object to optional processing (replaces the previous list)."""
    with c.admin_client(api_url, api_key) as h:
        _status(h.set_objections(list(purposes or []), user), json_out)


@me.command("erase")
@c.group_options
@c.handle_errors
def me_erase(
    ctx: typer.Context,
    confirm: Annotated[
        str | None, typer.Option(help="The account's email address (prompted if missing).")
    ] = None,
    user: User = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Erase your account: access ends now, personal data is purged within 30 days."""
    if confirm is None:
        confirm = str(typer.prompt("type the account's email address to erase it"))
    with c.admin_client(api_url, api_key) as h:
        answer = h.erase_account(confirm, user)
    if json_out:
        c.print_json(answer)
    else:
        typer.echo(
            f"{answer['user_id']}: erased; personal data purged after {answer['purge_after']}"
        )
