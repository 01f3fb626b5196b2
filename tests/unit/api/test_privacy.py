"""Data-subject rights: rectify, export, restrict, object, erase, and the purge job (fake clock)."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from sqlalchemy import select

from hutch.api.deps import Services
from hutch.db.models import ApiKeyRow, MemberRow, SandboxRow, UserRow
from hutch.db.session import Database
from hutch.models.api import Role
from hutch.models.privacy import Purpose
from hutch.services.clock import FakeClock
from hutch.services.privacy import PrivacyService, erased_email
from tests.unit.api.conftest import Client, World, add_user

DAY = 86400.0


class Recorder:
    """Stands in for the admin audit log and the billing pseudonymiser."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.pseudonymised: list[str] = []
        self.fail = False

    def log(self, session: Any, **kw: Any) -> None:
        self.entries.append(kw)

    def pseudonymise(self, user_id: str) -> None:
        if self.fail:
            raise RuntimeError("billing is down")
        self.pseudonymised.append(user_id)

    def actions(self) -> list[str]:
        return [e["action"] for e in self.entries]


@pytest.fixture
def rec(svc: Services, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    r = Recorder()
    monkeypatch.setattr(svc.privacy, "admin_log", r.log)
    monkeypatch.setattr(svc.privacy, "pseudonymise_user", r.pseudonymise)
    monkeypatch.setattr(svc.secrets, "admin_log", r.log)
    return r


def unzip(data: bytes) -> dict[str, Any]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n.removesuffix(".json"): json.loads(z.read(n)) for n in z.namelist()}


# --- rectify ---


def test_rectify_profile(client: Client, world: World, rec: Recorder) -> None:
    r = client.patch("/v1/me", headers=world.member.h, json={"name": "Ada", "email": "A@x.example"})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["email"]) == ("Ada", "a@x.example")
    assert client.get("/v1/me", headers=world.member.h).json()["user"]["name"] == "Ada"
    r = client.patch("/v1/me", headers=world.member.h, json={"email": "not-an-email"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "email"
    # Control characters: PostgreSQL refuses NUL in text (found by the schema fuzzer as a 500).
    for bad in ("a\u0000b@x.example", "a@x\u0000.example", "a\u007f@x.example"):
        r = client.patch("/v1/me", headers=world.member.h, json={"email": bad})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "email", bad
    r = client.patch("/v1/me", headers=world.member.h, json={"name": ""})
    assert r.status_code == 422
    r = client.patch("/v1/me", headers=world.viewer.h, json={"email": "a@x.example"})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    r = client.patch(f"/v1/users/{world.viewer.user_id}", headers=world.root.h, json={"name": "V"})
    assert r.status_code == 200 and r.json()["name"] == "V"
    assert rec.actions() == ["profile.rectified", "profile.rectified"]
    assert rec.entries[1]["actor_user_id"] == world.root.user_id
    assert rec.entries[1]["target_id"] == world.viewer.user_id
    assert rec.entries[1]["details"] == {"fields": "name"}


# --- export ---


def test_export_holds_everything_listed(client: Client, world: World, rec: Recorder) -> None:
    client.put(
        f"/v1/projects/{world.project_id}/secrets/TOKEN",
        headers=world.admin.h,
        json={"value": "hidden-value"},
    )
    sbx = client.post("/v1/sandboxes", headers=world.member.h, json={"metadata": {"k": "v"}})
    assert sbx.status_code == 201
    client.put("/v1/me/objections", headers=world.member.h, json={"purposes": ["marketing"]})
    r = client.get("/v1/me/export", headers=world.member.h)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    files = unzip(r.content)
    assert set(files) == {
        "manifest",
        "profile",
        "privacy",
        "teams",
        "projects",
        "api_keys",
        "sandboxes",
        "secrets",
        "usage",
        "invoices",
        "credits",
        "audit_entries",
    }
    assert files["manifest"]["user_id"] == world.member.user_id
    assert files["profile"]["user_id"] == world.member.user_id
    assert files["privacy"]["objections"] == ["marketing"]
    assert [t["team_id"] for t in files["teams"]] == [world.team_id]
    assert files["teams"][0]["role"] == "member"
    assert [p["project_id"] for p in files["projects"]] == [world.project_id]
    assert [k["key_id"] for k in files["api_keys"]] == [world.member.key_id]
    assert [s["sandbox_id"] for s in files["sandboxes"]] == [sbx.json()["sandbox_id"]]
    assert files["sandboxes"][0]["metadata"] == {"k": "v"}
    assert [s["name"] for s in files["secrets"]] == ["TOKEN"]
    # Billing is the team's: a member (who may not read it) gets none of it in an export.
    assert files["usage"] == files["invoices"] == files["credits"] == []
    assert isinstance(files["audit_entries"], list)
    assert b"hidden-value" not in r.content and world.member.key[8:-6] not in r.text
    # An administrator may export anyone's; nobody else may.
    r = client.get(f"/v1/users/{world.member.user_id}/export", headers=world.root.h)
    assert unzip(r.content)["profile"]["user_id"] == world.member.user_id
    assert (
        client.get(f"/v1/users/{world.member.user_id}/export", headers=world.owner.h).status_code
        == 403
    )
    assert rec.actions().count("account.exported") == 2


def test_export_collectors_are_pluggable(svc: Services, world: World) -> None:
    privacy = PrivacyService(svc.db, svc.clock, svc.sandboxes, svc.secrets)
    privacy.exports.register("usage", lambda s, uid: [{"user": uid, "vcpu_seconds": 10}])
    privacy.exports.register("invoices", lambda s, uid: [{"invoice": "inv_1", "micro_usd": 5}])
    privacy.exports.register("audit", lambda s, uid: [{"action": "key.created", "actor": uid}])
    with pytest.raises(ValueError, match="already registered"):
        privacy.exports.register("usage", lambda s, uid: [])
    with svc.db.session() as s:
        actor = svc.keys.authenticate(s, world.viewer.key)
        _, data = privacy.export(s, actor, None, source_ip=None)
    files = unzip(data)
    assert files["usage"] == [{"user": world.viewer.user_id, "vcpu_seconds": 10}]
    assert files["invoices"][0]["invoice"] == "inv_1"
    assert files["audit"][0]["actor"] == world.viewer.user_id
    assert files["manifest"]["files"][-3:] == ["usage.json", "invoices.json", "audit.json"]


# --- restrict and object ---


def test_restriction_blocks_new_sandboxes_and_keeps_data(
    client: Client, world: World, rec: Recorder
) -> None:
    h = world.member.h
    before = client.post("/v1/sandboxes", headers=h, json={}).json()["sandbox_id"]
    r = client.put("/v1/me/restriction", headers=h)
    assert r.status_code == 200 and r.json()["restricted_at"] is not None
    r = client.post("/v1/sandboxes", headers=h, json={})
    assert (r.status_code, r.json()["code"]) == (403, "account_restricted")
    assert client.get(f"/v1/sandboxes/{before}", headers=h).status_code == 200  # data kept
    assert client.get("/v1/me", headers=h).status_code == 200
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201
    assert client.get("/v1/me/privacy", headers=h).json()["restricted_at"] is not None
    r = client.delete("/v1/me/restriction", headers=h)
    assert r.status_code == 200 and r.json()["restricted_at"] is None
    assert client.post("/v1/sandboxes", headers=h, json={}).status_code == 201
    # An administrator may restrict someone else.
    client.put(f"/v1/users/{world.owner.user_id}/restriction", headers=world.root.h)
    r = client.post("/v1/sandboxes", headers=world.owner.h, json={})
    assert r.json()["code"] == "account_restricted"
    assert rec.actions() == [
        "account.restricted",
        "account.restriction_lifted",
        "account.restricted",
    ]


def test_objections_are_recorded_and_readable(client: Client, world: World, svc: Services) -> None:
    r = client.put(
        "/v1/me/objections", headers=world.member.h, json={"purposes": ["exec_audit", "marketing"]}
    )
    assert r.status_code == 200 and r.json()["objections"] == ["exec_audit", "marketing"]
    with svc.db.session() as s:
        assert svc.privacy.objects_to(s, world.member.user_id, Purpose.exec_audit)
        assert not svc.privacy.objects_to(s, world.member.user_id, Purpose.usage_analytics)
        assert not svc.privacy.objects_to(s, world.viewer.user_id, Purpose.exec_audit)
    r = client.put("/v1/me/objections", headers=world.member.h, json={"purposes": ["spying"]})
    assert r.status_code == 422 and "exec_audit" in json.dumps(r.json()["errors"])
    client.put("/v1/me/objections", headers=world.member.h, json={"purposes": []})
    with svc.db.session() as s:
        assert not svc.privacy.objects_to(s, world.member.user_id, Purpose.exec_audit)


# --- erase and purge ---


def test_erasure_blocks_at_once_kills_sandboxes_and_purges_after_30_days(
    client: Client,
    world: World,
    svc: Services,
    clock: FakeClock,
    database: Database,
    rec: Recorder,
) -> None:
    me = world.member
    second = add_user(svc, world.team_id, world.project_id, Role.member, user_id=me.user_id)
    mine = client.post("/v1/sandboxes", headers=me.h, json={}).json()["sandbox_id"]
    theirs = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    r = client.delete("/v1/me", headers=me.h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "confirm"
    r = client.delete("/v1/me", headers=me.h, params={"confirm": "someone@else.example"})
    assert r.status_code == 422
    r = client.delete("/v1/me", headers=me.h, params={"confirm": f"{me.user_id}@example.test"})
    assert r.status_code == 202, r.text
    status = r.json()
    assert status["erased_at"] is not None and status["purged_at"] is None
    # Access ends at once, for every key of the account.
    for who in (me, second):
        r = client.get("/v1/me", headers=who.h)
        assert (r.status_code, r.json()["code"]) == (401, "account_erased")
        assert r.headers["www-authenticate"] == "Bearer"
    owner = world.owner.h
    assert client.get(f"/v1/sandboxes/{mine}", headers=owner).json()["state"] == "stopped"
    assert client.get(f"/v1/sandboxes/{theirs}", headers=owner).json()["state"] == "running"
    with database.session() as s:
        keys = s.scalars(select(ApiKeyRow).where(ApiKeyRow.user_id == me.user_id)).all()
        assert keys and all(k.revoked_at is not None for k in keys)
    # Nothing is purged before 30 days have passed.
    assert svc.privacy.purge_due(clock.now()) == 0
    clock.advance(30 * DAY - 1)
    assert svc.privacy.purge_due(clock.now()) == 0
    with database.session() as s:
        user = s.get(UserRow, me.user_id)
        assert user is not None and user.email == f"{me.user_id}@example.test"
    assert rec.pseudonymised == []
    clock.advance(1)
    assert svc.privacy.purge_due(clock.now()) == 1
    with database.session() as s:
        user = s.get(UserRow, me.user_id)
        assert user is not None  # kept as the pseudonymous anchor of billing records
        assert (user.email, user.name) == (erased_email(me.user_id), "erased")
        assert s.scalars(select(MemberRow).where(MemberRow.user_id == me.user_id)).all() == []
        assert s.scalars(select(ApiKeyRow).where(ApiKeyRow.user_id == me.user_id)).all() == []
        assert s.get(SandboxRow, mine) is not None  # project data (and usage) stays
    assert rec.pseudonymised == [me.user_id]
    # Idempotent: running again purges nothing and pseudonymises nobody twice.
    clock.advance(DAY)
    assert svc.privacy.purge_due(clock.now()) == 0
    assert rec.pseudonymised == [me.user_id]
    r = client.get(f"/v1/users/{me.user_id}/privacy", headers=world.root.h)
    assert r.json()["purged_at"] is not None
    assert rec.actions() == ["account.erased", "account.purged"]
    assert rec.entries[1]["actor_user_id"] == "system"


def test_a_failed_pseudonymisation_is_retried(
    client: Client, world: World, svc: Services, clock: FakeClock, rec: Recorder
) -> None:
    me = world.viewer
    client.delete("/v1/me", headers=me.h, params={"confirm": f"{me.user_id}@example.test"})
    clock.advance(31 * DAY)
    rec.fail = True
    assert svc.privacy.purge_due(clock.now()) == 0
    r = client.get(f"/v1/users/{me.user_id}/privacy", headers=world.root.h)
    assert r.json()["purged_at"] is None
    rec.fail = False
    assert svc.privacy.purge_due(clock.now()) == 1
    assert rec.pseudonymised == [me.user_id]


def test_an_administrator_erases_another_account(
    client: Client, world: World, rec: Recorder
) -> None:
    target = world.admin
    r = client.delete(
        f"/v1/users/{target.user_id}",
        headers=world.owner.h,
        params={"confirm": f"{target.user_id}@example.test"},
    )
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert client.get("/v1/me", headers=target.h).status_code == 200
    r = client.delete(
        f"/v1/users/{target.user_id}",
        headers=world.root.h,
        params={"confirm": f"{target.user_id}@example.test"},
    )
    assert r.status_code == 202
    assert client.get("/v1/me", headers=target.h).json()["code"] == "account_erased"
    base = f"/v1/users/{target.user_id}"
    for method, path, body in (
        ("PATCH", base, {"name": "back"}),
        ("PUT", base + "/restriction", None),
        ("PUT", base + "/objections", {"purposes": []}),
    ):
        r = client.request(method, path, headers=world.root.h, json=body)
        assert (r.status_code, r.json()["code"]) == (409, "conflict"), path
    assert client.get(base + "/export", headers=world.root.h).status_code == 200
    assert rec.entries[-1]["actor_user_id"] == world.root.user_id
    r = client.delete("/v1/users/usr_nobody", headers=world.root.h, params={"confirm": "x@y.z"})
    assert r.status_code == 404


def test_export_holds_the_teams_billing_for_admins_and_the_log_about_the_user(
    client: Client, svc: Services, world: World
) -> None:
    with svc.db.session() as s:
        svc.billing.credits.ensure_account(s, world.team_id)  # the $50 welcome grant
        svc.admin_log.record(
            s,
            actor_user_id=world.root.user_id,
            action="account.suspend",
            target_type="user",
            target_id=world.owner.user_id,
            source_ip=None,
        )
        s.commit()
    files = unzip(client.get("/v1/me/export", headers=world.owner.h).content)
    assert [g["amount_micros"] for g in files["credits"]] == [50_000_000]
    assert [e["action"] for e in files["audit_entries"]] == ["account.suspend"]
    other = unzip(client.get("/v1/me/export", headers=world.other.h).content)
    assert other["credits"] == [] and other["audit_entries"] == []
