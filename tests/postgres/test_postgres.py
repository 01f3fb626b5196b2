"""PostgreSQL specifics: a fresh database per session, row locks that hold across processes."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from hutch.db.models import MemberRow, ProjectRow, TeamRow, UserRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.api import Mode, Role, SandboxCreate, Scope
from hutch.models.common import HutchError
from hutch.services.clock import SystemClock
from hutch.services.permissions import Principal
from hutch.services.sandboxes import Limits, SandboxService
from tests.support.live_runner import LiveRunner


def test_each_session_gets_its_own_database(database: Database) -> None:
    assert database.dialect == "postgresql"
    assert make_url(database.url).database.startswith("hutch_test_")  # type: ignore[union-attr]
    assert make_url(database.url).drivername == "postgresql+psycopg"


def test_timestamps_are_timestamptz(database: Database) -> None:
    cols = {c["name"]: c for c in inspect(database.engine).get_columns("sandboxes")}
    assert cols["created_at"]["type"].timezone is True


def test_quota_holds_across_api_processes(
    database: Database, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two API servers (own engines, own in-process locks) share one project's quota: the
    project row lock serialises their count-then-insert."""
    now = datetime.now(UTC)
    team, project, user = new_id("team"), new_id("prj"), new_id("usr")
    with database.session() as s:
        s.add_all(
            [
                TeamRow(id=team, name="t", created_at=now),
                UserRow(id=user, email="q@example.test", name="q", is_admin=False, created_at=now),
            ]
        )
        s.flush()
        s.add_all(
            [
                ProjectRow(id=project, team_id=team, name="p", created_at=now),
                MemberRow(team_id=team, user_id=user, role="owner", created_at=now),
            ]
        )
        s.commit()
    actor = Principal(
        key_id=new_id("key"),
        user_id=user,
        is_admin=False,
        project_id=project,
        team_id=team,
        mode=Mode.live,
        role=Role.owner,
        scopes=frozenset(Scope),
    )
    runner = LiveRunner(tmp_path_factory.mktemp("runner") / "r")
    servers = [
        SandboxService(Database(database.url), runner, SystemClock(), Limits(3, 10_000))  # type: ignore[arg-type]
        for _ in range(2)
    ]
    results: list[str] = []

    async def one(svc: SandboxService) -> None:
        try:
            await svc.create(actor, SandboxCreate())
            results.append("ok")
        except HutchError as e:
            results.append(e.code.value)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, servers[i % 2])

    try:
        anyio.run(main)
        assert len(runner.sandbox_ids()) == 3
    finally:
        runner.stop()
        for svc in servers:
            svc.db.dispose()
    assert sorted(results) == ["ok"] * 3 + ["quota_exceeded"] * 7
