"""Sandbox life cycle through a real runner: persisted transitions, runner failures, kill,
timeout, stats, proxying."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

import hutch.services.sandboxes as sandboxes_module
from hutch.api.deps import Services
from hutch.db.models import IdempotencyRow, SandboxRow
from hutch.db.privacy import SandboxOwnerRow
from hutch.models.api import Mode, Scope
from hutch.models.exec import Stream
from hutch.models.network import NetworkPolicy
from tests.support.live_runner import LiveRunner
from tests.unit.api.conftest import AppFactory, Client, World, build_world

NETWORK_DEFAULTS = NetworkPolicy().model_dump()


def _state(svc: Services, sandbox_id: str) -> str:
    with svc.db.session() as s:
        row = s.get(SandboxRow, sandbox_id)
        assert row is not None
        return row.state


def test_create_persists_creating_before_the_runner_acts(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    seen: dict[str, str] = {}
    runner.before_create = lambda req: seen.update(
        {req.sandbox_id or "": _state(svc, req.sandbox_id or "")}
    )
    r = client.post(
        "/v1/sandboxes",
        headers=world.owner.h,
        json={"vcpu": 2, "memory_mb": 2048, "env": {"A": "b"}, "metadata": {"k": "v"}},
    )
    assert r.status_code == 201, r.text
    sbx = r.json()
    assert seen == {sbx["sandbox_id"]: "creating"}, "the API chose the id and stored it first"
    assert runner.created[0].env == {"A": "b"} and runner.created[0].vcpu == 2
    assert sbx["state"] == "running" and sbx["metadata"] == {"k": "v"}
    assert sbx["project_id"] == world.project_id and sbx["mode"] == "live"
    assert sbx["expires_at"] > sbx["created_at"]
    assert client.get(f"/v1/sandboxes/{sbx['sandbox_id']}", headers=world.owner.h).json() == sbx


def test_the_create_path_stores_rows_as_the_orm_reads_and_queries_them(
    client: Client, world: World, svc: Services
) -> None:
    """The create path writes through DBAPI connections (hutch.db.raw); its rows must be the
    ones SQLAlchemy writes: datetimes that compare equal in queries (SQLite keeps them as
    text), JSON, metadata, the owner and the Idempotency-Key's record."""
    network = {"allow_cidrs": ["10.1.0.0/16"], "allow_domains": ["*.example.com"]}
    r = client.post(
        "/v1/sandboxes",
        headers={**world.owner.h, "Idempotency-Key": "parity-1"},
        json={"metadata": {"k": "v", "k.2": "ü"}, "network": network},
    )
    assert r.status_code == 201, r.text
    sbx = r.json()
    created = datetime.fromisoformat(sbx["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(sbx["expires_at"].replace("Z", "+00:00"))
    with svc.db.session() as s:
        found = s.scalars(
            select(SandboxRow).where(
                SandboxRow.created_at == created,
                SandboxRow.expires_at == expires,
                SandboxRow.updated_at <= expires,
            )
        ).all()
        assert [row.id for row in found] == [sbx["sandbox_id"]]
        row = found[0]
        assert row.state == "running" and row.network == {**NETWORK_DEFAULTS, **network}
        assert {m.key: m.value for m in row.meta} == {"k": "v", "k.2": "ü"}
        assert row.created_at.tzinfo is not None and row.ended_at is None
        owner = s.get(SandboxOwnerRow, sbx["sandbox_id"])
        assert owner is not None and owner.user_id == world.owner.user_id
        record = s.scalars(select(IdempotencyRow).where(IdempotencyRow.key == "parity-1")).one()
        assert record.status == 201 and json.loads(record.body or "") == sbx
        assert record.created_at <= svc.clock.now() and record.created_at.tzinfo is not None
    replay = client.post(
        "/v1/sandboxes",
        headers={**world.owner.h, "Idempotency-Key": "parity-1"},
        json={"metadata": {"k": "v", "k.2": "ü"}, "network": network},
    )
    assert replay.json() == sbx and replay.headers["Idempotent-Replayed"] == "true"


def test_a_create_that_would_wait_for_the_database_leaves_the_event_loop_free(
    client: Client, world: World, svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SQLite the create path's transactions run on the event loop when nothing is in
    the way; while another writer holds the database, the create waits in a worker thread
    instead, and the server keeps answering. The retried admission spends one rate token."""
    if not svc.db.inline:
        pytest.skip("only SQLite runs transactions on the event loop")
    limiter = svc.sandboxes.limiter
    hops: list[str] = []
    to_worker = sandboxes_module.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kw: Any) -> Any:
        name = getattr(fn, "__qualname__", "")
        if name.startswith("SandboxService."):  # (the module is anyio's: others hop too)
            hops.append(name)
        return await to_worker(fn, *args, **kw)

    monkeypatch.setattr(sandboxes_module.to_thread, "run_sync", counted)
    # The key's first use records its last-used time, a write: have that done first.
    assert client.get("/v1/sandboxes", headers=world.owner.h).status_code == 200
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201
    assert hops == [], "nothing in the way: both transactions ran on the event loop"
    tokens = limiter._buckets[world.project_id].tokens
    held = svc.db.sessions()
    held.execute(text("UPDATE projects SET name = name WHERE id = :p"), {"p": world.project_id})

    async def scenario() -> int:
        create = asyncio.create_task(
            client.http.post("/v1/sandboxes", headers=world.owner.h, json={})
        )
        try:
            await asyncio.sleep(0.5)
            assert not create.done(), "the create waits for the writer"
            t = time.monotonic()
            listed = await asyncio.wait_for(
                client.http.get("/v1/sandboxes", headers=world.owner.h), 5
            )
            assert listed.status_code == 200 and time.monotonic() - t < 2.0, "the loop answers"
        finally:
            held.rollback()
            held.close()
        return (await asyncio.wait_for(create, 30)).status_code

    assert client.run(scenario()) == 201
    assert hops == ["SandboxService._admit_with_env"], "the admission went to a worker thread"
    assert limiter._buckets[world.project_id].tokens == tokens - 1


def test_env_values_are_never_persisted(client: Client, world: World, svc: Services) -> None:
    marker = "ENV-VALUE-" + os.urandom(6).hex()
    assert (
        client.post(
            "/v1/sandboxes", headers=world.owner.h, json={"env": {"TOKEN": marker}}
        ).status_code
        == 201
    )
    from sqlalchemy import text

    with svc.db.engine.connect() as conn:
        rows = [
            repr(tuple(r))
            for t in ("sandboxes", "sandbox_metadata", "idempotency_records")
            for r in conn.execute(text(f"SELECT * FROM {t}"))
        ]
    assert rows and marker not in "".join(rows)


def test_runner_refusal_marks_the_sandbox_failed(
    client: Client, world: World, runner: LiveRunner
) -> None:
    r = client.post("/v1/sandboxes", headers=world.owner.h, json={"template": "no-such"})
    assert (r.status_code, r.json()["code"]) == (404, "template_not_found"), r.text
    items = client.get("/v1/sandboxes", headers=world.owner.h).json()["items"]
    assert [(s["state"], s["end_reason"]) for s in items] == [("failed", "template_not_found")]
    assert items[0]["ended_at"] is not None
    assert runner.sandbox_ids() == set(), "nothing half-created on the host"


def test_runner_gone_is_runner_unavailable(make_app: AppFactory, tmp_path: Path) -> None:
    from hutch.api.app import create_app
    from hutch.runner.client import RunnerClient

    svc: Services = make_app().state.services
    dead = RunnerClient(tmp_path / "no-runner.sock")
    app = create_app(svc.settings, runner=dead, clock=svc.clock, database=svc.db, background=False)
    client = Client(app)
    try:
        world = build_world(svc)
        r = client.post("/v1/sandboxes", headers=world.owner.h, json={})
        assert (r.status_code, r.json()["code"]) == (503, "runner_unavailable")
        items = client.get("/v1/sandboxes", headers=world.owner.h).json()["items"]
        assert [(s["state"], s["end_reason"]) for s in items] == [("failed", "runner_unavailable")]
    finally:
        client.close()


def test_kill_persists_stopping_first_then_stopped(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    seen: list[str] = []
    runner.before_kill = lambda sid: seen.append(_state(svc, sid))
    assert client.delete(f"/v1/sandboxes/{sbx}", headers=world.member.h).status_code == 204
    assert seen == ["stopping"]
    assert sbx not in runner.sandbox_ids()
    got = client.get(f"/v1/sandboxes/{sbx}", headers=world.owner.h).json()
    assert (got["state"], got["end_reason"]) == ("stopped", "killed") and got["ended_at"]
    # Idempotent; the runner is not asked again.
    assert client.delete(f"/v1/sandboxes/{sbx}", headers=world.owner.h).status_code == 204
    assert seen == ["stopping"]


def test_kill_of_a_sandbox_the_runner_lost(
    client: Client, world: World, runner: LiveRunner
) -> None:
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    runner.vanish(sbx)
    assert client.delete(f"/v1/sandboxes/{sbx}", headers=world.owner.h).status_code == 204
    assert client.get(f"/v1/sandboxes/{sbx}", headers=world.owner.h).json()["state"] == "stopped"


def test_timeout_and_stats_need_a_running_sandbox(client: Client, world: World) -> None:
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={"timeout_s": 60}).json()
    url = f"/v1/sandboxes/{sbx['sandbox_id']}"
    r = client.post(f"{url}/timeout", headers=world.owner.h, json={"timeout_s": 3600})
    assert r.status_code == 200 and r.json()["expires_at"] > sbx["expires_at"]
    assert client.get(url, headers=world.owner.h).json()["expires_at"] == r.json()["expires_at"]
    stats = client.get(f"{url}/stats", headers=world.viewer.h).json()
    assert stats["sandbox_id"] == sbx["sandbox_id"] and stats["memory_limit_bytes"] == 1024 * 2**20
    assert (
        client.post(f"{url}/timeout", headers=world.owner.h, json={"timeout_s": 0}).status_code
        == 422
    )
    client.delete(url, headers=world.owner.h)
    for r in (
        client.post(f"{url}/timeout", headers=world.owner.h, json={"timeout_s": 60}),
        client.get(f"{url}/stats", headers=world.owner.h),
        client.post(f"{url}/exec", headers=world.owner.h, json={"cmd": "true"}),
    ):
        assert (r.status_code, r.json()["code"]) == (409, "sandbox_not_running")


def test_exec_and_processes_are_proxied(client: Client, world: World) -> None:
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    url = f"/v1/sandboxes/{sbx}"
    r = client.post(f"{url}/exec", headers=world.member.h, json={"cmd": ["echo", "hello"]})
    assert r.status_code == 200 and r.json()["stdout"] == "hello\n" and r.json()["exit_code"] == 0
    r = client.post(
        f"{url}/exec",
        headers=world.member.h,
        json={"cmd": "sleep 60", "background": True, "tag": "t"},
    )
    assert r.status_code == 201 and r.json()["running"] is True
    pid = r.json()["pid"]
    procs = client.get(f"{url}/processes", headers=world.viewer.h).json()
    assert [(p["pid"], p["tag"]) for p in procs] == [(pid, "t")]
    r = client.post(f"{url}/processes/999/signal", headers=world.member.h, json={})
    assert (r.status_code, r.json()["code"]) == (404, "process_not_found")
    r = client.post(f"{url}/processes/{pid}/signal", headers=world.member.h, json={"signal": 15})
    assert r.status_code == 204, r.text
    done = client.post(f"{url}/processes/{pid}/wait", headers=world.member.h).json()
    assert done["pid"] == pid and done["signal"] == 15
    r = client.post(f"{url}/exec", headers=world.member.h, json={"cmd": []})
    assert r.status_code == 422


def test_files_stream_both_ways(client: Client, world: World, runner: LiveRunner) -> None:
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    url = f"/v1/sandboxes/{sbx}/files"
    data = os.urandom(3 * 2**20 + 7)

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    r = client.put(
        url,
        headers=world.member.h,
        params={"path": "/home/user/blob", "user": "root"},
        content=chunks(),
    )
    assert r.status_code == 200 and r.json() == {"path": "/home/user/blob", "size": len(data)}
    assert runner.upload_chunks[-1] > 1, "the upload reached the runner in pieces, not buffered"
    r = client.get(url, headers=world.viewer.h, params={"path": "/home/user/blob"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.content == data
    r = client.get(url, headers=world.viewer.h, params={"path": "/home/user/missing"})
    assert (r.status_code, r.json()["code"]) == (404, "file_not_found")
    r = client.get(url, headers=world.viewer.h, params={"path": "relative/path"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request")
    assert client.get(
        f"{url}/exists", headers=world.viewer.h, params={"path": "/home/user/blob"}
    ).json()["exists"]
    assert client.get(
        f"{url}/stat", headers=world.viewer.h, params={"path": "/home/user/blob"}
    ).json()["size"] == len(data)
    r = client.post(
        f"{url}/rename", headers=world.member.h, json={"src": "/home/user/blob", "dst": "/tmp/b"}
    )
    assert r.status_code == 200 and r.json()["path"] == "/tmp/b"
    assert [
        f["path"]
        for f in client.get(f"{url}/list", headers=world.viewer.h, params={"path": "/tmp"}).json()
    ] == ["/tmp/b"]
    assert client.delete(url, headers=world.member.h, params={"path": "/tmp/b"}).status_code == 204
    assert not client.get(
        f"{url}/exists", headers=world.viewer.h, params={"path": "/tmp/b"}
    ).json()["exists"]


def test_exec_stream_is_proxied_frame_by_frame(
    client: Client, ws_client: TestClient, world: World, runner: LiveRunner
) -> None:
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    with ws_client.websocket_connect(
        f"/v1/sandboxes/{sbx}/exec/stream", headers=world.member.h
    ) as ws:
        ws.send_text(json.dumps({"type": "start", "request": {"cmd": ["cat"]}}))
        started = ws.receive_json()
        assert started["type"] == "started" and started["pid"] > 1
        ws.send_bytes(bytes([Stream.stdin]) + b"ping")
        assert ws.receive_bytes() == bytes([Stream.stdout]) + b"ping"
        ws.send_text(json.dumps({"type": "close_stdin"}))
        end = ws.receive_json()
        assert (end["type"], end["exit_code"]) == ("exit", 0)


def test_without_a_runner_sandbox_routes_answer_503(make_app: AppFactory) -> None:
    from hutch.api.app import create_app

    app = make_app()
    svc: Services = app.state.services
    bare = create_app(svc.settings, runner=None, clock=svc.clock, database=svc.db, background=False)
    client = Client(bare)
    try:
        world = build_world(bare.state.services)
        r = client.post("/v1/sandboxes", headers=world.owner.h, json={})
        assert (r.status_code, r.json()["code"]) == (503, "runner_unavailable")
        assert client.get("/v1/sandboxes", headers=world.owner.h).json()["items"] == []
        assert client.get("/healthz").json()["runner"] is None
    finally:
        client.close()


def test_metrics_count_requests_by_route_template_and_sandboxes_by_state(
    client: Client, world: World
) -> None:
    ids = [
        client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
        for _ in range(3)
    ]
    client.delete(f"/v1/sandboxes/{ids[0]}", headers=world.owner.h)
    for i in ids:
        client.get(f"/v1/sandboxes/{i}", headers=world.owner.h)
    text = client.get("/metrics").text
    assert 'hutch_sandboxes{state="running"} 2.0' in text
    assert 'hutch_sandboxes{state="stopped"} 1.0' in text
    assert 'route="/v1/sandboxes/{sandbox_id}",status="200"' in text
    assert ids[1] not in text, "metrics are labelled by route template, never by raw path"
    assert (
        'hutch_http_request_duration_seconds_count{method="GET",route="/v1/sandboxes/{sandbox_id}"}'
        in text
    )


def test_scope_and_mode_enums_are_stable() -> None:
    # Stored in the database and in keys' scope lists: renaming one is a migration.
    assert {s.value for s in Scope} >= {
        "sandboxes:read",
        "sandboxes:write",
        "keys:admin",
        "projects:admin",
        "members:admin",
        "billing:read",
    }
    assert {m.value for m in Mode} == {"live", "test"}
