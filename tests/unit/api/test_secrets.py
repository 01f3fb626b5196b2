"""Project secrets through the API: write-only values, envelope encryption at rest, KEK rotation
and rewrap, associated-data binding, injection on sandbox create, nothing in logs or records."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hutch.api.deps import Services
from hutch.db.base import Base
from hutch.db.models import IdempotencyRow, SandboxRow
from hutch.db.privacy import ProjectSecretRow
from hutch.db.session import Database
from hutch.models.common import ErrorCode, HutchError
from hutch.services.permissions import Principal
from tests.unit.api.conftest import Client, World


def marker() -> str:
    return "SECRETMARKER" + secrets.token_hex(8)


def url(project: str, name: str = "") -> str:
    return f"/v1/projects/{project}/secrets" + (f"/{name}" if name else "")


def principal(svc: Services, key: str) -> Principal:
    with svc.db.session() as s:
        return svc.keys.authenticate(s, key)


def everything_stored(database: Database) -> bytes:
    """Every row of every table as bytes, and for SQLite the database files themselves."""
    out = []
    with database.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                for v in row:
                    out.append(v if isinstance(v, bytes) else str(v).encode())
    if database.dialect == "sqlite":
        path = Path(database.engine.url.database or "")
        for f in (path, path.with_name(path.name + "-wal")):
            if f.exists():
                out.append(f.read_bytes())
    return b"\n".join(out)


def test_values_are_write_only(client: Client, world: World) -> None:
    m = marker()
    h, p = world.admin.h, world.project_id
    r = client.put(url(p, "API_TOKEN"), headers=h, json={"value": m})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["kek_id"].startswith("local:v")
    r2 = client.put(url(p, "API_TOKEN"), headers=h, json={"value": m + "2"})
    assert r2.status_code == 200 and r2.json()["version"] == 2
    listed = client.get(url(p), headers=world.viewer.h)
    one = client.get(url(p, "API_TOKEN"), headers=world.viewer.h)
    assert [s["name"] for s in listed.json()["items"]] == ["API_TOKEN"]
    assert set(one.json()) == {
        "project_id",
        "name",
        "version",
        "kek_id",
        "created_at",
        "updated_at",
    }
    for resp in (r, r2, listed, one):
        assert m not in resp.text
    assert client.delete(url(p, "API_TOKEN"), headers=h).status_code == 204
    r = client.get(url(p, "API_TOKEN"), headers=h)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert client.delete(url(p, "API_TOKEN"), headers=h).status_code == 404


def test_bad_names_and_values_are_refused(client: Client, world: World) -> None:
    h, p = world.admin.h, world.project_id
    r = client.put(url(p, "1BAD"), headers=h, json={"value": "x"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name"
    r = client.put(url(p, "OK"), headers=h, json={"value": "a\x00b"})
    assert r.status_code == 422 and "a\x00b" not in r.text
    r = client.put(url(p, "OK"), headers=h, json={"value": "x" * (64 * 1024 + 1)})
    assert r.status_code == 422
    assert client.get(url(p), headers=h).json()["items"] == []


def test_secrets_are_unreadable_at_rest(
    client: Client, world: World, database: Database, svc: Services
) -> None:
    m = marker()
    r = client.put(url(world.project_id, "DB_PASSWORD"), headers=world.admin.h, json={"value": m})
    assert r.status_code == 201
    stored = everything_stored(database)
    assert b"DB_PASSWORD" in stored  # the search does see what is stored
    assert m.encode() not in stored
    # ...and yet it decrypts for a key of the project.
    env = svc.secrets.env_for(principal(svc, world.member.key), [("PW", "DB_PASSWORD")])
    assert env == {"PW": m}


def test_kek_rotation_and_rewrap(
    client: Client, world: World, database: Database, svc: Services
) -> None:
    values = {f"S{i}": marker() for i in range(3)}
    for name, v in values.items():
        client.put(url(world.project_id, name), headers=world.admin.h, json={"value": v})
    with svc.db.session() as s:
        before = {
            r.name: (r.kek_id, r.wrapped_key, r.ciphertext)
            for r in s.scalars(select(ProjectSecretRow))
        }
    r = client.post("/v1/secrets/rewrap", headers=world.owner.h, json={"rotate": True})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    r = client.post("/v1/secrets/rewrap", headers=world.root.h, json={"rotate": True})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["rotated"] and res["rewrapped"] == 3 and res["already_current"] == 0
    with svc.db.session() as s:
        after = {
            r.name: (r.kek_id, r.wrapped_key, r.ciphertext)
            for r in s.scalars(select(ProjectSecretRow))
        }
    for name, (kek_id, wrapped, ct) in after.items():
        assert kek_id == res["kek_id"] != before[name][0]
        assert wrapped != before[name][1]
        assert ct == before[name][2]  # only the data key was rewrapped, never the value
    again = client.post("/v1/secrets/rewrap", headers=world.root.h, json={}).json()
    assert (again["rewrapped"], again["already_current"]) == (0, 3)
    actor = principal(svc, world.member.key)
    assert svc.secrets.env_for(actor, [(n, n) for n in values]) == values
    assert all(v.encode() not in everything_stored(database) for v in values.values())


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(
    client: Client, world: World, svc: Services
) -> None:
    a, b = marker(), marker()
    client.put(url(world.project_id, "A"), headers=world.admin.h, json={"value": a})
    client.put(url(world.project_id, "B"), headers=world.admin.h, json={"value": b})
    client.put(url(world.other_project_id, "A"), headers=world.other.h, json={"value": b})
    actor = principal(svc, world.member.key)
    with svc.db.session() as s:
        row_a = s.scalar(
            select(ProjectSecretRow).where(
                ProjectSecretRow.project_id == world.project_id, ProjectSecretRow.name == "A"
            )
        )
        assert row_a is not None
        stolen = {
            "kek_id": row_a.kek_id,
            "wrapped_key": row_a.wrapped_key,
            "nonce": row_a.nonce,
            "ciphertext": row_a.ciphertext,
        }
        # To another name in the same project, and to the same name in another team's project.
        s.execute(
            update(ProjectSecretRow)
            .where(ProjectSecretRow.name.in_(["A", "B"]), ProjectSecretRow.id != row_a.id)
            .values(**stolen)
        )
        s.commit()
    with pytest.raises(HutchError) as e:
        svc.secrets.env_for(actor, [("B", "B")])
    assert e.value.code is ErrorCode.secrets_unavailable
    with pytest.raises(HutchError):
        svc.secrets.env_for(principal(svc, world.other.key), [("A", "A")])
    assert svc.secrets.env_for(actor, [("A", "A")]) == {"A": a}  # the original still opens


def test_injection_on_create_keeps_values_out_of_rows_records_and_logs(
    client: Client,
    world: World,
    database: Database,
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = marker()
    capsys.readouterr()
    client.put(url(world.project_id, "TOKEN"), headers=world.admin.h, json={"value": m})
    body: dict[str, Any] = {"secrets": {"APP_TOKEN": "TOKEN"}, "env": {"PLAIN": "x"}}
    r = client.post(
        "/v1/sandboxes", headers={**world.member.h, "Idempotency-Key": "inject-1"}, json=body
    )
    assert r.status_code == 201, r.text
    assert m not in r.text
    replay = client.post(
        "/v1/sandboxes", headers={**world.member.h, "Idempotency-Key": "inject-1"}, json=body
    )
    assert replay.headers.get("Idempotent-Replayed") == "true"
    with database.session() as s:
        rec = s.scalars(select(IdempotencyRow)).one()
        assert rec.body is not None and "APP_TOKEN" not in rec.body and m not in rec.body
    assert m.encode() not in everything_stored(database)
    out = capsys.readouterr()
    assert "secret_written" in out.out  # logging works
    assert m not in out.out + out.err


def test_unknown_or_clashing_secrets_leave_nothing_behind(
    client: Client, world: World, database: Database
) -> None:
    client.put(url(world.project_id, "TOKEN"), headers=world.admin.h, json={"value": "v"})
    h = world.member.h
    r = client.post("/v1/sandboxes", headers=h, json={"secrets": ["TOKEN", "MISSING"]})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request")
    assert "MISSING" in r.json()["detail"]
    r = client.post("/v1/sandboxes", headers=h, json={"secrets": ["TOKEN"], "env": {"TOKEN": "x"}})
    assert r.status_code == 422
    r = client.post("/v1/sandboxes", headers=h, json={"secrets": {"1X": "TOKEN"}})
    assert r.status_code == 422
    # Another team's secret of the same name is not visible to this project's keys.
    client.put(url(world.other_project_id, "THEIRS"), headers=world.other.h, json={"value": "v"})
    r = client.post("/v1/sandboxes", headers=h, json={"secrets": ["THEIRS"]})
    assert r.status_code == 422
    with database.session() as s:
        assert s.scalars(select(SandboxRow)).all() == []


def test_secret_routes_respect_roles_and_tenancy(client: Client, world: World) -> None:
    p = world.project_id
    r = client.put(url(p, "X"), headers=world.member.h, json={"value": "v"})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    r = client.put(url(p, "X"), headers=world.other.h, json={"value": "v"})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert client.get(url(p), headers=world.other.h).status_code == 404
