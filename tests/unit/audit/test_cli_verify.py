"""`hutch audit verify` on the database URL and the public key, without a server."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import update
from typer.testing import CliRunner

from hutch.cli.main import app
from hutch.db.audit import AdminLogRow
from hutch.db.session import Database
from hutch.services.audit import AdminLog, load_signing_key
from hutch.services.clock import FakeClock


def test_verify_command_reports_intact_then_tampered(database: Database, tmp_path: Path) -> None:
    key_path = tmp_path / "audit-signing.key"
    alog = AdminLog(FakeClock(), load_signing_key(key_path), checkpoint_every=2)
    for i in range(5):
        with database.session() as s:
            alog.record(
                s,
                actor_user_id="usr_x",
                action="key.create",
                target_type="api_key",
                target_id=f"key_{i}",
                source_ip="127.0.0.1",
            )
            s.commit()
    args = [
        "audit", "verify", "--database-url", database.url,
        "--public-key", str(tmp_path / "audit-signing.key.pub"),
    ]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "intact: 5 entries (1..5), 2 checkpoints (latest 4)" in r.output
    with database.session() as s:
        s.execute(update(AdminLogRow).where(AdminLogRow.seq == 3).values(target_id="key_x"))
        s.commit()
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert out["ok"] is False
    assert out["problems"] == ["entry 3 was altered: its content does not match its hash"]
    # The data directory alone finds the key (its .pub next to the signing key).
    r = CliRunner().invoke(app, ["audit", "verify", "--database-url", database.url,
                                 "--data-dir", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 1 and "TAMPERED" in r.output
    r = CliRunner().invoke(app, ["audit", "verify", "--public-key", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "cannot read the public key" in r.output


def test_audit_and_suspension_commands_are_registered() -> None:
    run = CliRunner()
    assert "audit" in run.invoke(app, ["--help"]).output
    audit = run.invoke(app, ["audit", "--help"]).output
    assert all(cmd in audit for cmd in ("verify", "execs", "log"))
    users = run.invoke(app, ["users", "--help"]).output
    assert all(cmd in users for cmd in ("suspend", "unsuspend", "terminate"))
    projects = run.invoke(app, ["projects", "update", "--help"]).output
    assert "--audit-exec" in projects
    serve = run.invoke(app, ["serve", "--help"]).output
    assert all(opt in serve for opt in ("--tls-cert", "--tls-key", "--tls13-only"))
