"""`hutch audit`: verify the admin log (offline, on the database), list and export the exec
trail, page through the admin log; and `hutch users suspend/unsuspend/terminate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hutch.cli import _common as c

app = typer.Typer(
    help="Audit trails: verify the admin log, list and export execs.", no_args_is_help=True
)

EXEC_COLUMNS = ("started_at", "sandbox_id", "command", "kind", "pid", "exit_code", "ended_at")
LOG_COLUMNS = ("seq", "at", "action", "target_type", "target_id", "actor_user_id", "source_ip")
EXIT_TAMPERED = 1


@app.command("verify")
def verify(
    database_url: Annotated[
        str | None, typer.Option(help="Database to check (default: HUTCH_DATABASE_URL or SQLite)")
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="Checkpoint public key (PEM; default: the signing key's .pub)"),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="The server's data directory")] = None,
    json_out: c.Json = False,
) -> None:
    """Check every hash, link and signed checkpoint of the admin log; exit 1 on tampering."""
    from hutch.api.settings import ApiSettings
    from hutch.db.session import Database
    from hutch.services.audit import load_public_key, public_key_id
    from hutch.services.audit_verify import verify as run_verify

    settings = ApiSettings() if data_dir is None else ApiSettings(data_dir=data_dir)
    key_path = public_key or settings.audit_key_path().with_name(
        settings.audit_key_path().name + ".pub"
    )
    try:
        pub = load_public_key(key_path)
    except (OSError, ValueError) as e:
        typer.echo(f"error: cannot read the public key {key_path}: {e}", err=True)
        raise typer.Exit(c.EXIT_USAGE) from None
    db = Database(database_url or settings.db_url())
    try:
        with db.session() as s:
            v = run_verify(s, pub)
    finally:
        db.dispose()
    result: dict[str, Any] = {
        "ok": v.ok,
        "entries": v.entries,
        "first_seq": v.first_seq,
        "last_seq": v.last_seq,
        "checkpoints": v.checkpoints,
        "latest_checkpoint_seq": v.latest_checkpoint_seq,
        "public_key_id": public_key_id(pub),
        "problems": v.problems,
    }
    if json_out:
        c.print_json(result)
    else:
        state = "[green]intact[/green]" if v.ok else "[red]TAMPERED[/red]"
        c.out_console().print(
            f"admin log {state}: {v.entries} entries ({v.first_seq}..{v.last_seq}), "
            f"{v.checkpoints} checkpoints (latest {v.latest_checkpoint_seq}), "
            f"key {result['public_key_id']}"
        )
        for p in v.problems:
            c.out_console().print(f"  - {p}", markup=False)
    if not v.ok:
        raise typer.Exit(EXIT_TAMPERED)


@app.command("execs")
@c.handle_errors
def execs(
    sandbox: Annotated[str | None, typer.Option(help="Only this sandbox")] = None,
    command: Annotated[str | None, typer.Option(help="Only this command name")] = None,
    since: Annotated[str | None, typer.Option(help="Started at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="Started before (ISO 8601)")] = None,
    export: Annotated[
        str | None, typer.Option("--export", help="Print everything as jsonl or csv")
    ] = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """The project's exec trail: command name, exit code and times (never arguments or output)."""
    filters = {
        k: v
        for k, v in {
            "sandbox_id": sandbox,
            "command": command,
            "since": since,
            "until": until,
        }.items()
        if v is not None
    }
    with c.admin_client(api_url, api_key) as h:
        if export is not None:
            if export not in ("jsonl", "csv"):
                raise ValueError("--export must be jsonl or csv")
            sys.stdout.write(h.export_execs(export, **filters))
            return
        rows = list(h.list_execs(**filters))
    if json_out:
        c.print_json(rows)
    else:
        c.print_table(rows, EXEC_COLUMNS)


@app.command("log")
@c.handle_errors
def admin_log(
    after: Annotated[int | None, typer.Option(help="Entries after this seq")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Admin log entries in chain order (server administrators)."""
    with c.admin_client(api_url, api_key) as h:
        page = h.admin_log(after_seq=after, limit=limit)
    if json_out:
        c.print_json(page)
    else:
        c.print_table(page["items"], LOG_COLUMNS)


# --- hutch users suspend / unsuspend / terminate ---

Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the admin log)")]
Team = Annotated[bool, typer.Option("--team", help="The id is a team's, not a user's")]


def _kind(team: bool) -> str:
    return "teams" if team else "users"


@c.handle_errors
def users_suspend(
    subject_id: Annotated[str, typer.Argument(help="User id (or team id with --team)")],
    reason: Reason,
    team: Team = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Suspend: no new sandboxes or commands until reinstated."""
    with c.admin_client(api_url, api_key) as h:
        answer = h.suspend(_kind(team), subject_id, reason)
    c.print_json(answer) if json_out else typer.echo(f"{subject_id} suspended")


@c.handle_errors
def users_unsuspend(
    subject_id: Annotated[str, typer.Argument(help="User id (or team id with --team)")],
    reason: Reason,
    team: Team = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Reinstate a suspended user or team."""
    with c.admin_client(api_url, api_key) as h:
        h.unsuspend(_kind(team), subject_id, reason)
    typer.echo(f"{subject_id} reinstated")


@c.handle_errors
def users_terminate(
    subject_id: Annotated[str, typer.Argument(help="User id (or team id with --team)")],
    reason: Reason,
    team: Team = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Terminate for good: keys revoked, running sandboxes killed."""
    if not yes:
        typer.confirm(f"terminate {subject_id} for good?", abort=True)
    with c.admin_client(api_url, api_key) as h:
        answer = h.terminate(_kind(team), subject_id, reason)
    if json_out:
        c.print_json(answer)
    else:
        typer.echo(
            f"{subject_id} terminated: {answer['keys_revoked']} keys revoked, "
            f"{answer['sandboxes_killed']} sandboxes killed"
        )


def register(app_: typer.Typer, users: typer.Typer) -> None:
    """Attach `hutch audit` and the suspension commands under `hutch users`."""
    app_.add_typer(app, name="audit")
    users.command("suspend")(users_suspend)
    users.command("unsuspend")(users_unsuspend)
    users.command("terminate")(users_terminate)
