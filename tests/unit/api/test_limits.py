"""Per-project concurrency quota and create rate limit: 429 with Retry-After."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import inspect

from hutch.db.session import Database
from hutch.services.clock import FakeClock
from tests.unit.api.conftest import AppFactory, Client, World, build_world


def _setup(make_app: AppFactory, **settings: int) -> tuple[FastAPI, Client, World]:
    app = make_app(**settings)
    return app, Client(app), build_world(app.state.services)


def test_concurrency_quota(make_app: AppFactory) -> None:
    _, client, world = _setup(make_app, max_concurrent_sandboxes=2)
    try:
        ids = [
            client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
            for _ in range(2)
        ]
        r = client.post("/v1/sandboxes", headers=world.member.h, json={})
        assert (r.status_code, r.json()["code"]) == (429, "quota_exceeded")
        assert int(r.headers["retry-after"]) >= 1
        assert "at most 2" in r.json()["detail"]
        # Another project has its own quota.
        assert client.post("/v1/sandboxes", headers=world.other.h, json={}).status_code == 201
        # Killing one frees a slot; test-mode sandboxes count toward the same project quota.
        assert client.delete(f"/v1/sandboxes/{ids[0]}", headers=world.owner.h).status_code == 204
        assert client.post("/v1/sandboxes", headers=world.test.h, json={}).status_code == 201
        assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 429
    finally:
        client.close()


def test_create_rate_limit(make_app: AppFactory) -> None:
    app, client, world = _setup(make_app, create_rate_per_minute=3)
    clock: FakeClock = app.state.services.clock  # type: ignore[assignment]
    try:
        for _ in range(3):
            assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201
        r = client.post("/v1/sandboxes", headers=world.owner.h, json={})
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
        assert r.headers["retry-after"] == "20"  # one token per 20 s at 3 per minute
        assert client.post("/v1/sandboxes", headers=world.other.h, json={}).status_code == 201
        clock.advance(19)
        assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 429
        clock.advance(1)
        assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201
        # A rejected create leaves nothing behind.
        items = client.get("/v1/sandboxes", headers=world.owner.h).json()["items"]
        assert len(items) == 4
    finally:
        client.close()


def test_the_quota_count_reads_only_active_sandboxes(database: Database) -> None:
    """Every create counts the project's active sandboxes; the count must come from an index
    of (project, state), not from walking every sandbox the project ever had."""
    from hutch.services.sandboxes import _COUNT_ACTIVE

    with database.engine.connect() as conn:
        sql = str(_COUNT_ACTIVE.compile(dialect=conn.dialect))
        if database.dialect == "sqlite":
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ("prj_x",)).all()
            assert any("ix_sandboxes_project_id_state" in row[-1] for row in plan), plan
        else:  # the planner's choice depends on table size; the index must exist
            names = {ix["name"] for ix in inspect(conn).get_indexes("sandboxes")}
            assert "ix_sandboxes_project_id_state" in names
