"""Where the CLI's command groups are attached to the app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach every command group; each group module owns its own commands."""
    from hutch.cli import accounts, audit, billing, privacy, sandbox, serve, teams, template

    serve.register(app)
    app.add_typer(sandbox.app, name="sandbox")
    app.add_typer(accounts.keys, name="keys")
    app.add_typer(template.app, name="template")
    app.add_typer(accounts.projects, name="projects")
    app.add_typer(accounts.users, name="users")
    app.add_typer(teams.app, name="teams")
    app.add_typer(privacy.me, name="me")
    app.add_typer(privacy.secrets, name="secrets")
    app.command("usage")(billing.usage)
    app.add_typer(billing.billing, name="billing")
    audit.register(app, accounts.users)
