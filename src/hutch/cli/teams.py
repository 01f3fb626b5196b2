"""`hutch teams`: teams and their members."""

from __future__ import annotations

from typing import Annotated

import typer

from hutch.cli import _common as c
from hutch.models.api import Role

app = typer.Typer(help="Teams and their members.", no_args_is_help=True)

TEAM_COLUMNS = ("team_id", "name", "role", "created_at")
MEMBER_COLUMNS = ("user_id", "role", "created_at")

TeamId = Annotated[str, typer.Argument(help="Team id (team_…).", show_default=False)]
UserId = Annotated[str, typer.Argument(help="User id (usr_…).", show_default=False)]


@app.command("ls")
@c.handle_errors
def teams_ls(api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False) -> None:
    """List the teams you belong to, with your role in each."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.teams(), json_out, TEAM_COLUMNS)


@app.command("create")
@c.handle_errors
def teams_create(
    name: Annotated[str, typer.Argument(help="Team name.")],
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Create a team; you become its owner."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.create_team(name), json_out, TEAM_COLUMNS)


@app.command("info")
@c.handle_errors
def teams_info(
    team_id: TeamId,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Show one team."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.get_team(team_id), json_out, TEAM_COLUMNS)


@app.command("members")
@c.handle_errors
def teams_members(
    team_id: TeamId,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """List a team's members and their roles."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.members(team_id), json_out, MEMBER_COLUMNS)


@app.command("add-member")
@c.handle_errors
def teams_add_member(
    team_id: TeamId,
    user_id: UserId,
    role: Annotated[
        Role, typer.Option("--role", "-r", help="Role in the team.", case_sensitive=False)
    ] = Role.member,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Add a user to a team."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.add_member(team_id, user_id, role), json_out, MEMBER_COLUMNS)


@app.command("set-role")
@c.handle_errors
def teams_set_role(
    team_id: TeamId,
    user_id: UserId,
    role: Annotated[
        Role, typer.Argument(help="The new role.", case_sensitive=False, show_default=False)
    ],
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Change a member's role (a team keeps at least one owner)."""
    with c.admin_client(api_url, api_key) as h:
        c.show(h.set_role(team_id, user_id, role), json_out, MEMBER_COLUMNS)


@app.command("remove-member")
@c.handle_errors
def teams_remove_member(
    team_id: TeamId,
    user_id: UserId,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Remove a user from a team (a team keeps at least one owner)."""
    with c.admin_client(api_url, api_key) as h:
        h.remove_member(team_id, user_id)
    if json_out:
        c.print_json({"team_id": team_id, "user_id": user_id, "removed": True})
    else:
        typer.echo(f"{user_id}: removed from {team_id}")
