"""Admin actions through the API land in the admin log; suspension; the usage log and folding."""

from __future__ import annotations

from sqlalchemy import delete, select

from hutch.api.deps import Services
from hutch.db.audit import AdminLogRow, UsageDailyRow, UsageRow
from hutch.db.models import ApiKeyRow, SandboxRow
from hutch.ids import new_id
from hutch.services.clock import FakeClock
from tests.support.rows import add_sandbox
from tests.unit.api.conftest import Client, World


def entries(svc: Services) -> list[AdminLogRow]:
    with svc.db.session() as s:
        return list(s.scalars(select(AdminLogRow).order_by(AdminLogRow.seq)))


def test_administrative_actions_are_logged_with_actor_target_and_source(
    client: Client, svc: Services, world: World, clock: FakeClock
) -> None:
    owner = world.owner
    key = client.post("/v1/keys", headers=owner.h, json={"name": "ci"}).json()
    client.post(f"/v1/keys/{key['key_id']}/rotate", headers=owner.h, json={"grace_s": 0})
    client.delete(f"/v1/keys/{key['key_id']}", headers=owner.h)
    base = f"/v1/teams/{world.team_id}/members"
    client.patch(f"{base}/{world.viewer.user_id}", headers=owner.h, json={"role": "member"})
    client.delete(f"{base}/{world.member.user_id}", headers=owner.h)
    client.post(base, headers=owner.h, json={"user_id": world.member.user_id, "role": "viewer"})
    prj = client.post("/v1/projects", headers=owner.h, json={"name": "p2"}).json()
    r = client.patch(
        f"/v1/projects/{prj['project_id']}", headers=owner.h, json={"audit_exec": True}
    )
    assert r.status_code == 200 and r.json()["audit_exec"] is True
    client.post("/v1/teams", headers=owner.h, json={"name": "t2"})
    client.post("/v1/users", headers=world.root.h, json={"email": "x@example.test", "name": "x"})
    rows = entries(svc)
    assert [r.action for r in rows] == [
        "key.create",
        "key.rotate",
        "key.revoke",
        "member.role_change",
        "member.remove",
        "member.add",
        "project.create",
        "project.update",
        "team.create",
        "user.create",
    ]
    assert all(r.source_ip == "127.0.0.1" for r in rows)
    assert all(r.at == clock.now() for r in rows)
    assert rows[0].actor_user_id == owner.user_id and rows[0].target_id == key["key_id"]
    assert rows[3].details == {"user_id": world.viewer.user_id, "from": "viewer", "to": "member"}
    assert rows[7].details == {"audit_exec": "true"}
    assert rows[9].actor_user_id == world.root.user_id
    # Never key material: neither the secret nor its hash.
    with svc.db.session() as s:
        hashes = set(s.scalars(select(ApiKeyRow.key_hash)))
    text = repr([(r.details, r.target_id) for r in rows])
    assert key["key"] not in text and not any(h in text for h in hashes)
    # Failed actions leave nothing behind.
    n = len(rows)
    r = client.post(base, headers=owner.h, json={"user_id": world.admin.user_id})
    assert r.status_code == 409
    assert len(entries(svc)) == n


def test_admin_log_routes_list_and_verify(client: Client, svc: Services, world: World) -> None:
    for i in range(3):
        client.post("/v1/keys", headers=world.owner.h, json={"name": f"k{i}"})
    r = client.get("/v1/audit/admin-log?limit=2", headers=world.root.h)
    page = r.json()
    assert [e["seq"] for e in page["items"]] == [1, 2] and page["next_after_seq"] == 2
    rest = client.get("/v1/audit/admin-log?after_seq=2", headers=world.root.h).json()
    assert [e["seq"] for e in rest["items"]] == [3] and rest["next_after_seq"] is None
    last = client.get(f"/v1/audit/admin-log?after_seq={2**63 - 1}", headers=world.root.h)
    assert last.status_code == 200 and last.json()["items"] == []
    # Past what the database's 64-bit sequence can hold: a 422 naming the field, never a 500.
    over = client.get(f"/v1/audit/admin-log?after_seq={2**63}", headers=world.root.h)
    assert over.status_code == 422 and "after_seq" in over.text, over.text
    v = client.get("/v1/audit/admin-log/verify", headers=world.root.h).json()
    assert v["ok"] is True and v["entries"] == 3 and v["problems"] == []
    with svc.db.session() as s:
        row = s.get(AdminLogRow, 2)
        assert row is not None
        row.details = {**row.details, "mode": "test"}
        s.commit()
    v = client.get("/v1/audit/admin-log/verify", headers=world.root.h).json()
    assert v["ok"] is False and v["problems"] == [
        "entry 2 was altered: its content does not match its hash"
    ]


def test_suspension_blocks_create_and_exec_until_lifted(
    client: Client, svc: Services, world: World
) -> None:
    sbx = add_sandbox(svc.db, world.project_id, svc.clock.now())
    member = world.member
    url = f"/v1/admin/users/{member.user_id}"
    # The key and the sandbox are now known to this process (its hot path skips the database).
    client.post(f"/v1/sandboxes/{sbx}/exec", headers=member.h, json={"cmd": ["true"]})
    assert svc.sandboxes.seen_running(svc.auth_cache.get(svc.keys.hash(member.key)), sbx)  # type: ignore[arg-type]
    r = client.post(f"{url}/suspend", headers=world.root.h, json={"reason": "crypto mining"})
    assert r.status_code == 200 and r.json()["state"] == "suspended"
    for method, path, body in (
        ("POST", "/v1/sandboxes", {}),
        ("POST", f"/v1/sandboxes/{sbx}/exec", {"cmd": ["true"]}),
    ):
        r = client.request(method, path, headers=member.h, json=body)
        assert (r.status_code, r.json()["code"]) == (403, "account_suspended"), r.text
    # Reading still works (the data is kept), and others in the team are unaffected.
    assert client.get(f"/v1/sandboxes/{sbx}", headers=member.h).status_code == 200
    r = client.post("/v1/sandboxes", headers=world.owner.h, json={})
    assert r.status_code == 201
    r = client.post(f"{url}/unsuspend", headers=world.root.h, json={"reason": "appeal"})
    assert r.status_code == 204
    assert client.post("/v1/sandboxes", headers=member.h, json={}).status_code == 201
    actions = [(e.action, e.details.get("reason")) for e in entries(svc)]
    assert ("account.suspend", "crypto mining") in actions
    assert ("account.unsuspend", "appeal") in actions


def test_team_suspension_and_termination(client: Client, svc: Services, world: World) -> None:
    sbx = add_sandbox(svc.db, world.other_project_id, svc.clock.now())
    mine = add_sandbox(svc.db, world.project_id, svc.clock.now())
    url = f"/v1/admin/teams/{world.other_team_id}"
    r = client.post(f"{url}/suspend", headers=world.root.h, json={"reason": "spam"})
    assert r.status_code == 200
    r = client.post("/v1/sandboxes", headers=world.other.h, json={})
    assert r.json()["code"] == "account_suspended"
    with svc.db.session() as s:
        assert s.get(SandboxRow, sbx).state == "running"  # type: ignore[union-attr]
    r = client.post(f"{url}/terminate", headers=world.root.h, json={"reason": "fraud"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["state"], body["sandboxes_killed"], body["keys_revoked"]) == ("terminated", 1, 1)
    with svc.db.session() as s:
        row = s.get(SandboxRow, sbx)
        assert row is not None and (row.state, row.end_reason) == ("stopped", "terminated")
        assert s.get(SandboxRow, mine).state == "running"  # type: ignore[union-attr]
    assert client.get("/v1/me", headers=world.other.h).json()["code"] == "key_revoked"
    r = client.post(f"{url}/unsuspend", headers=world.root.h, json={"reason": "x"})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    r = client.get(f"{url}/suspension", headers=world.root.h)
    assert r.json()["reason"] == "fraud"
    assert [e.action for e in entries(svc)] == ["account.suspend", "account.terminate"]


def test_admins_cannot_suspend_themselves_and_unknown_subjects_are_404(
    client: Client, world: World
) -> None:
    r = client.post(
        f"/v1/admin/users/{world.root.user_id}/suspend", headers=world.root.h, json={"reason": "x"}
    )
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    r = client.post(
        f"/v1/admin/users/{new_id('usr')}/suspend", headers=world.root.h, json={"reason": "x"}
    )
    assert r.status_code == 404
    r = client.post(
        f"/v1/admin/users/{world.member.user_id}/suspend", headers=world.root.h, json={"reason": ""}
    )
    assert r.status_code == 422


def test_usage_log_is_written_off_the_request_path_then_folded(
    client: Client, svc: Services, world: World, clock: FakeClock
) -> None:
    svc.usage_log.flush()
    with svc.db.session() as s:
        s.execute(delete(UsageRow))
        s.commit()
    sbx = add_sandbox(svc.db, world.project_id, svc.clock.now())
    client.get(f"/v1/sandboxes/{sbx}", headers=world.owner.h)
    client.get("/v1/sandboxes/sbx_nope", headers=world.owner.h)
    client.get("/v1/me")
    with svc.db.session() as s:
        assert s.scalars(select(UsageRow)).all() == []  # nothing written during the requests
    assert svc.usage_log.flush() == 3
    with svc.db.session() as s:
        rows = list(s.scalars(select(UsageRow).order_by(UsageRow.id)))
    assert [(r.route, r.status, r.sandbox_id) for r in rows] == [
        ("/v1/sandboxes/{sandbox_id}", 200, sbx),
        ("/v1/sandboxes/{sandbox_id}", 404, "sbx_nope"),
        ("/v1/me", 401, None),
    ]
    assert rows[0].key_prefix == world.owner.key[:12] and rows[2].key_prefix is None
    assert all(r.at == clock.now() and r.latency_us > 0 for r in rows)
    # 91 days later the raw rows are folded into anonymous daily counts.
    day = clock.now().date()
    clock.advance(91 * 86400)
    client.get(f"/v1/sandboxes/{sbx}", headers=world.owner.h)
    svc.usage_log.flush()
    assert svc.usage_log.fold() == 3
    with svc.db.session() as s:
        left = list(s.scalars(select(UsageRow)))
        aggs = list(s.scalars(select(UsageDailyRow).order_by(UsageDailyRow.status_class)))
    assert len(left) == 1 and left[0].at == clock.now()
    assert sorted((a.day, a.method, a.route, a.status_class, a.count) for a in aggs) == [
        (day, "GET", "/v1/me", "4xx", 1),
        (day, "GET", "/v1/sandboxes/{sandbox_id}", "2xx", 1),
        (day, "GET", "/v1/sandboxes/{sandbox_id}", "4xx", 1),
    ]
    assert sum(a.latency_us_sum for a in aggs) == sum(r.latency_us for r in rows)
    blob = repr([a.__dict__ for a in aggs])
    assert world.owner.key[:12] not in blob and sbx not in blob and "127.0.0.1" not in blob
    assert set(UsageDailyRow.__table__.columns.keys()) == {
        "day",
        "method",
        "route",
        "status_class",
        "count",
        "latency_us_sum",
    }
    assert svc.usage_log.fold() == 0


def test_the_apps_scheduler_runs_every_retention_job(
    client: Client, svc: Services, world: World, clock: FakeClock
) -> None:
    import anyio

    from hutch.db.audit import AdminLogCheckpointRow
    from hutch.db.models import IdempotencyRow

    svc.usage_log.flush()
    assert set(svc.scheduler.jobs) >= {
        "idempotency_purge",
        "usage_fold",
        "admin_log_checkpoint",
        "admin_log_prune",
    }
    idem = {**world.owner.h, "Idempotency-Key": "k1"}
    assert client.post("/v1/keys", headers=idem, json={"name": "old"}).status_code == 201
    client.get("/v1/me", headers=world.owner.h)
    svc.usage_log.flush()
    clock.advance(401 * 86400)
    client.post("/v1/keys", headers=world.owner.h, json={"name": "new"})
    ran = anyio.run(svc.scheduler.run_due)
    assert sorted(ran) == sorted(svc.scheduler.jobs)
    with svc.db.session() as s:
        assert s.scalars(select(IdempotencyRow)).all() == []
        assert s.scalars(select(UsageRow)).all() == []
        assert s.scalar(select(UsageDailyRow.count).where(UsageDailyRow.route == "/v1/me")) == 1
        actions = [r.action for r in s.scalars(select(AdminLogRow).order_by(AdminLogRow.seq))]
        head = s.scalars(select(AdminLogCheckpointRow.seq)).all()
    assert actions == ["key.create", "audit.prune"]  # the 401-day-old entry went
    assert head  # a signed checkpoint covers the head
    v = client.get("/v1/audit/admin-log/verify", headers=world.root.h).json()
    assert v["ok"] is True and v["first_seq"] == 2, v
    assert anyio.run(svc.scheduler.run_due) == []  # nothing is due again at the same time


def test_an_objection_to_the_exec_trail_is_honoured(
    client: Client, svc: Services, world: World
) -> None:
    """The exec trail is optional processing: once a user objects, their commands are not kept."""
    from hutch.db.audit import ExecAuditRow

    def kept() -> int:
        with svc.db.session() as s:
            return len(s.scalars(select(ExecAuditRow)).all())

    sbx = add_sandbox(svc.db, world.project_id, svc.clock.now())
    r = client.patch(
        f"/v1/projects/{world.project_id}", headers=world.owner.h, json={"audit_exec": True}
    )
    assert r.status_code == 200
    client.post(f"/v1/sandboxes/{sbx}/exec", headers=world.member.h, json={"cmd": ["true"]})
    assert kept() == 1
    r = client.put("/v1/me/objections", headers=world.member.h, json={"purposes": ["exec_audit"]})
    assert r.status_code in (200, 204), r.text
    client.post(f"/v1/sandboxes/{sbx}/exec", headers=world.member.h, json={"cmd": ["true"]})
    assert kept() == 1, "nothing recorded for the user who objected"
    client.post(f"/v1/sandboxes/{sbx}/exec", headers=world.owner.h, json={"cmd": ["true"]})
    assert kept() == 2, "others in the project are still recorded"
