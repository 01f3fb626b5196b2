"""`hutch keys`, `hutch projects`, `hutch users` and `hutch me`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hutch.cli import _common as c

keys = typer.Typer(help="API keys: create, list, rotate, revoke.", no_args_is_help=True)
projects = typer.Typer(help="Projects.", no_args_is_help=True)
users = typer.Typer(help="Users (admin keys).", no_args_is_help=True)

KEY_COLUMNS = (
    "key_id",
    "name",
    "mode",
    "display",
    "scopes",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
)
PROJECT_COLUMNS = ("project_id", "name", "team_id", "audit_exec", "created_at")
USER_COLUMNS = ("user_id", "email", "name", "is_admin", "created_at")


def _secret_notice(answer: dict[str, Any], json_out: bool) -> None:
    if not json_out and answer.get("key"):
        c.err_console().print(
            "[yellow]This is the only time the secret is shown; store it now.[/yellow]"
        )


@keys.command("create")
@c.handle_errors
def keys_create(
    name: Annotated[str, typer.Argument(help="A name to recognise the key by.")],
    scope: Annotated[list[str] | None, typer.Option("--scope", "-s", help="Repeatable.")] = None,
    mode: Annotated[str, typer.Option(help="live or test.")] = "live",
    project: Annotated[str | None, typer.Option(help="Project id (default: the key's).")] = None,
    user: Annotated[str | None, typer.Option(help="Owner user id (default: you).")] = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Create an API key (its secret is printed once)."""
    if mode not in ("live", "test"):
        raise typer.BadParameter("mode must be 'live' or 'test'", param_hint="--mode")
    with c.admin_client(api_url, api_key) as h:
        answer = h.create_key(name, scope, mode, project_id=project, user_id=user)
    c.show(answer, json_out, KEY_COLUMNS)
    _secret_notice(answer, json_out)


@keys.command("ls")
@c.handle_errors
def keys_ls(api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False) -> None:
    """List API keys (never their secrets)."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.list_keys(), json_out, KEY_COLUMNS)


@keys.command("rotate")
@c.handle_errors
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="Key id (key_…).")],
    grace_s: Annotated[
        int | None, typer.Option(help="Seconds the old secret still works.", min=0)
    ] = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Issue a new secret for a key."""
    with c.admin_client(api_url, api_key) as h:
        answer = h.rotate_key(key_id, grace_s)
    c.show(answer, json_out, KEY_COLUMNS)
    _secret_notice(answer, json_out)


@keys.command("revoke")
@c.handle_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (key_…).")],
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Revoke a key at once."""
    with c.admin_client(api_url, api_key) as h:
        h.revoke_key(key_id)
    if json_out:
        c.print_json({"key_id": key_id, "revoked": True})
    else:
        typer.echo(f"{key_id}: revoked")


@projects.command("ls")
@c.handle_errors
def projects_ls(
    api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False
) -> None:
    """List projects."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.list_projects(), json_out, PROJECT_COLUMNS)


@projects.command("create")
@c.handle_errors
def projects_create(
    name: Annotated[str, typer.Argument(help="Project name.")],
    team: Annotated[str | None, typer.Option(help="Team id that owns it.")] = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Create a project."""
    extra = {"team_id": team} if team else {}
    with c.admin_client(api_url, api_key) as h:
        c.show(h.create_project(name, **extra), json_out, PROJECT_COLUMNS)


@projects.command("update")
@c.handle_errors
def projects_update(
    project_id: Annotated[str, typer.Argument(help="Project id.")],
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    audit_exec: Annotated[
        bool | None,
        typer.Option("--audit-exec/--no-audit-exec", help="Keep the exec audit trail."),
    ] = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Rename a project or change its settings."""
    changes = {k: v for k, v in {"name": name, "audit_exec": audit_exec}.items() if v is not None}
    if not changes:
        raise ValueError("give --name and/or --audit-exec/--no-audit-exec")
    with c.admin_client(api_url, api_key) as h:
        c.show(h.update_project(project_id, **changes), json_out, PROJECT_COLUMNS)


@users.command("ls")
@c.handle_errors
def users_ls(api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False) -> None:
    """List users."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.list_users(), json_out, USER_COLUMNS)


@users.command("create")
@c.handle_errors
def users_create(
    email: Annotated[str, typer.Argument(help="E-mail address.")],
    name: Annotated[str | None, typer.Option(help="Display name (default: from the email).")] = (
        None
    ),
    admin: Annotated[bool, typer.Option("--admin", help="Server administrator.")] = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Create a user."""
    with c.admin_client(api_url, api_key) as h:
        answer = h.create_user(email, name or email.split("@")[0], is_admin=admin)
    c.show(answer, json_out, USER_COLUMNS)


@c.handle_errors
def me(api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False) -> None:
    """Who the API key belongs to."""
    with c.admin_client(api_url, api_key) as h:
        answer = h.me()
    if json_out:
        c.print_json(answer)
    else:
        c.print_table(me_rows(answer), ("field", "value"))


def me_rows(me: dict[str, Any]) -> list[dict[str, Any]]:
    """`/v1/me` flattened for a two-column table (nested objects as `name (id)`)."""

    def label(obj: Any, name: str, ident: str) -> Any:
        if isinstance(obj, dict):
            return f"{obj.get(name, '')} ({obj.get(ident, '')})"
        return obj

    rows = [
        {"field": "user", "value": label(me.get("user"), "email", "user_id")},
        {"field": "project", "value": label(me.get("project"), "name", "project_id")},
        {"field": "key", "value": label(me.get("key"), "display", "key_id")},
        {"field": "role", "value": me.get("role")},
        {"field": "scopes", "value": me.get("effective_scopes")},
    ]
    known = {"user", "project", "key", "role", "effective_scopes"}
    rows += [{"field": k, "value": v} for k, v in me.items() if k not in known]
    return rows
