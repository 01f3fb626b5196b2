"""Authentication: header forms, hash-only storage, revocation, rotation grace, last use."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from hutch.api.deps import Services
from hutch.services import keys
from hutch.services.clock import FakeClock
from tests.unit.api.conftest import Client, World


def test_bearer_and_x_api_key_both_work(client: Client, world: World) -> None:
    assert client.get("/v1/me", headers=world.owner.h).status_code == 200
    r = client.get("/v1/me", headers={"X-API-Key": world.owner.key})
    assert r.status_code == 200
    assert r.json()["key"]["key_id"] == world.owner.key_id
    assert r.json()["role"] == "owner"


def test_missing_malformed_and_unknown_keys_are_401(client: Client, world: World) -> None:
    key = world.owner.key
    altered = key[:-1] + ("y" if key.endswith("x") else "x")  # the checksum no longer matches
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer sk_live_nope"},
        {"Authorization": f"Bearer {keys.generate(keys.Mode.live)}"},  # well formed, unknown
        {"Authorization": f"Bearer {altered}"},
    ):
        r = client.get("/v1/me", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"


def test_raw_key_is_never_stored(client: Client, world: World, svc: Services) -> None:
    r = client.post("/v1/keys", headers=world.owner.h, json={"name": "ci"})
    assert r.status_code == 201
    raw = r.json()["key"]
    assert keys.is_well_formed(raw)
    with svc.db.engine.connect() as conn:
        dump = "\n".join(
            repr(tuple(row))
            for table in ("api_keys", "idempotency_records", "users", "projects")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )
    assert svc.keys.hash(raw) in dump
    assert raw not in dump and raw[12:-4] not in dump
    if svc.db.dialect == "sqlite":
        # Also the file itself (and its write-ahead log), not only what queries show.
        db_file = svc.db.engine.url.database
        assert db_file
        for suffix in ("", "-wal"):
            path = Path(db_file + suffix)
            if path.exists():
                assert raw.encode() not in path.read_bytes()
    listed = client.get("/v1/keys", headers=world.owner.h).json()["items"]
    assert all("key" not in k for k in listed)
    assert {k["display"] for k in listed} >= {f"{raw[:12]}…{raw[-4:]}"}


def test_revoked_key_answers_key_revoked(client: Client, world: World) -> None:
    new = client.post("/v1/keys", headers=world.member.h, json={"name": "tmp"}).json()
    h = {"Authorization": f"Bearer {new['key']}"}
    assert client.get("/v1/me", headers=h).status_code == 200
    assert client.delete(f"/v1/keys/{new['key_id']}", headers=world.member.h).status_code == 204
    r = client.get("/v1/me", headers=h)
    assert (r.status_code, r.json()["code"]) == (401, "key_revoked")
    # Revoking again is a no-op, not an error.
    assert client.delete(f"/v1/keys/{new['key_id']}", headers=world.member.h).status_code == 204


def test_rotation_keeps_old_key_until_grace_ends(
    client: Client, world: World, clock: FakeClock
) -> None:
    old = client.post("/v1/keys", headers=world.admin.h, json={"name": "svc"}).json()
    old_h = {"Authorization": f"Bearer {old['key']}"}
    r = client.post(f"/v1/keys/{old['key_id']}/rotate", headers=old_h, json={"grace_s": 3600})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["key"] != old["key"] and new["scopes"] == old["scopes"]
    new_h = {"Authorization": f"Bearer {new['key']}"}
    clock.advance(3599)
    assert client.get("/v1/me", headers=old_h).status_code == 200
    clock.advance(1)
    r = client.get("/v1/me", headers=old_h)
    assert (r.status_code, r.json()["code"]) == (401, "key_expired")
    assert client.get("/v1/me", headers=new_h).status_code == 200
    listed = {k["key_id"]: k for k in client.get("/v1/keys", headers=new_h).json()["items"]}
    assert listed[old["key_id"]]["replaced_by"] == new["key_id"]
    # A rotated key cannot be rotated again.
    r = client.post(f"/v1/keys/{old['key_id']}/rotate", headers=new_h, json={})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")


def test_rotation_with_zero_grace_expires_at_once(client: Client, world: World) -> None:
    old = client.post("/v1/keys", headers=world.owner.h, json={"name": "x"}).json()
    r = client.post(f"/v1/keys/{old['key_id']}/rotate", headers=world.owner.h, json={"grace_s": 0})
    assert r.status_code == 201
    r = client.get("/v1/me", headers={"Authorization": f"Bearer {old['key']}"})
    assert r.json()["code"] == "key_expired"


def test_last_used_is_written_at_most_once_a_minute(
    client: Client, world: World, clock: FakeClock
) -> None:
    def last_used() -> str | None:
        me = client.get("/v1/me", headers=world.viewer.h).json()
        return me["key"]["last_used_at"]

    first = last_used()
    assert first is not None
    clock.advance(30)
    assert last_used() == first
    clock.advance(31)
    assert last_used() != first


def test_scopes_are_limited_by_the_owners_role(client: Client, world: World) -> None:
    # An owner hands a viewer a key with every scope it may give: the viewer still only reads.
    r = client.post(
        "/v1/keys",
        headers=world.owner.h,
        json={
            "name": "v",
            "user_id": world.viewer.user_id,
            "scopes": ["sandboxes:write", "sandboxes:read"],
        },
    )
    assert r.status_code == 201, r.text
    h = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.get("/v1/me", headers=h).json()["effective_scopes"] == ["sandboxes:read"]
    r = client.post("/v1/sandboxes", headers=h, json={})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert client.get("/v1/sandboxes", headers=h).status_code == 200


def test_narrow_key_of_an_owner_is_limited_by_its_scopes(client: Client, world: World) -> None:
    r = client.post(
        "/v1/keys", headers=world.owner.h, json={"name": "ro", "scopes": ["sandboxes:read"]}
    )
    h = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.get("/v1/sandboxes", headers=h).status_code == 200
    assert client.post("/v1/projects", headers=h, json={"name": "n"}).status_code == 403


def test_keys_cannot_grant_more_than_their_creator(client: Client, world: World) -> None:
    r = client.post(
        "/v1/keys", headers=world.member.h, json={"name": "x", "scopes": ["keys:admin"]}
    )
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert "keys:admin" in r.json()["detail"]


def test_test_mode_keys_cannot_mint_live_keys(client: Client, world: World) -> None:
    r = client.post("/v1/keys", headers=world.test.h, json={"name": "x", "mode": "live"})
    assert r.status_code == 403
    r = client.post("/v1/keys", headers=world.test.h, json={"name": "x", "mode": "test"})
    assert r.status_code == 201 and r.json()["key"].startswith("sk_test_")


def test_removed_member_keys_lose_every_right(client: Client, world: World) -> None:
    url = f"/v1/teams/{world.team_id}/members/{world.member.user_id}"
    assert client.delete(url, headers=world.admin.h).status_code == 204
    me = client.get("/v1/me", headers=world.member.h).json()
    assert me["role"] is None and me["effective_scopes"] == []
    assert client.get("/v1/sandboxes", headers=world.member.h).status_code == 403
