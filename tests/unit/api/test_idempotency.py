"""Idempotency-Key on creates: replays return the first response; misuse is a 409."""

from __future__ import annotations

import pytest

from hutch.services.clock import FakeClock
from tests.support.live_runner import LiveRunner
from tests.unit.api.conftest import AppFactory, Client, World, build_world

CREATES = [
    ("/v1/sandboxes", {"metadata": {"job": "1"}}),
    ("/v1/projects", {"name": "idem"}),
    ("/v1/teams", {"name": "idem"}),
    ("/v1/users", {"email": "idem@example.test", "name": "i"}),
    ("/v1/keys", {"name": "idem"}),
]


@pytest.mark.parametrize(("path", "body"), CREATES, ids=[c[0] for c in CREATES])
def test_replay_returns_the_first_response(
    client: Client, world: World, path: str, body: dict
) -> None:
    h = {**world.root.h, "Idempotency-Key": "k-1"}
    first = client.post(path, headers=h, json=body)
    assert first.status_code == 201, first.text
    again = client.post(path, headers=h, json=body)
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    # Key order and whitespace do not make a different request.
    reordered = client.post(
        path,
        headers={**h, "Content-Type": "application/json"},
        content=" " + first.request.content.decode() + " ",
    )
    assert reordered.content == first.content
    # Without the header, the same body creates a second resource (or a conflict).
    assert client.post(path, headers=world.root.h, json=body).content != first.content


@pytest.mark.parametrize(("path", "body"), CREATES, ids=[c[0] for c in CREATES])
def test_same_key_different_body_is_a_conflict(
    client: Client, world: World, path: str, body: dict
) -> None:
    h = {**world.root.h, "Idempotency-Key": "k-2"}
    assert client.post(path, headers=h, json=body).status_code == 201
    changed = {**body, "name": "other"} if "name" in body else {"metadata": {"job": "2"}}
    r = client.post(path, headers=h, json=changed)
    assert (r.status_code, r.json()["code"]) == (409, "idempotency_conflict")
    assert r.headers["content-type"] == "application/problem+json"


def test_one_create_only_reaches_the_runner_once(
    client: Client, world: World, runner: LiveRunner
) -> None:
    h = {**world.owner.h, "Idempotency-Key": "once"}
    ids = {client.post("/v1/sandboxes", headers=h, json={}).json()["sandbox_id"] for _ in range(3)}
    assert len(ids) == 1 and len(runner.created) == 1


def test_keys_are_scoped_to_the_caller(client: Client, world: World) -> None:
    body = {"name": "scoped"}
    a = client.post("/v1/projects", headers={**world.owner.h, "Idempotency-Key": "same"}, json=body)
    b = client.post("/v1/projects", headers={**world.other.h, "Idempotency-Key": "same"}, json=body)
    assert a.status_code == b.status_code == 201
    assert a.json()["project_id"] != b.json()["project_id"]


def test_same_key_on_another_route_is_a_conflict(client: Client, world: World) -> None:
    h = {**world.owner.h, "Idempotency-Key": "cross"}
    assert client.post("/v1/projects", headers=h, json={"name": "x"}).status_code == 201
    assert client.post("/v1/teams", headers=h, json={"name": "x"}).status_code == 409


def test_failed_requests_are_not_remembered(
    client: Client, world: World, runner: LiveRunner
) -> None:
    h = {**world.owner.h, "Idempotency-Key": "retry-me"}
    r = client.post("/v1/sandboxes", headers=h, json={"template": "missing"})
    assert (r.status_code, r.json()["code"]) == (404, "template_not_found")
    r = client.post("/v1/sandboxes", headers=h, json={"template": "base"})
    assert r.status_code == 201, "a retry after a failure must run again, even with a new body"


def test_records_expire_after_24_hours(client: Client, world: World, clock: FakeClock) -> None:
    h = {**world.owner.h, "Idempotency-Key": "old"}
    first = client.post("/v1/projects", headers=h, json={"name": "a"})
    clock.advance(24 * 3600 - 1)
    assert client.post("/v1/projects", headers=h, json={"name": "b"}).status_code == 409
    clock.advance(1)
    r = client.post("/v1/projects", headers=h, json={"name": "b"})
    assert r.status_code == 201 and r.json()["project_id"] != first.json()["project_id"]


def test_expired_records_are_purged(client: Client, world: World, clock: FakeClock, svc) -> None:  # type: ignore[no-untyped-def]
    client.post(
        "/v1/projects", headers={**world.owner.h, "Idempotency-Key": "p"}, json={"name": "p"}
    )
    assert svc.idempotency.purge() == 0
    clock.advance(24 * 3600)
    assert svc.idempotency.purge() == 1


def test_bad_idempotency_keys_are_refused(client: Client, world: World) -> None:
    for bad in ("", "x" * 256, "has space"):
        r = client.post(
            "/v1/projects", headers={**world.owner.h, "Idempotency-Key": bad}, json={"name": "q"}
        )
        assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), bad


def test_a_replay_is_answered_before_limits_and_a_refused_create_keeps_no_claim(
    make_app: AppFactory,
) -> None:
    """The key is checked first (a replay spends no rate-limit token and is not refused by a
    full quota), and claimed together with the sandbox: a create refused at admission leaves
    the key free for the retry."""
    app = make_app(create_rate_per_minute=3, max_concurrent_sandboxes=1)
    world = build_world(app.state.services)
    client = Client(app)
    try:
        h = {**world.owner.h, "Idempotency-Key": "limits"}
        first = client.post("/v1/sandboxes", headers=h, json={})
        assert first.status_code == 201, first.text
        for _ in range(3):  # with the two creates below, more than the bucket holds
            again = client.post("/v1/sandboxes", headers=h, json={})
            assert (again.status_code, again.content) == (201, first.content)
        other = {**world.owner.h, "Idempotency-Key": "refused"}
        r = client.post("/v1/sandboxes", headers=other, json={})
        assert (r.status_code, r.json()["code"]) == (429, "quota_exceeded"), r.text
        sid = first.json()["sandbox_id"]
        assert client.delete(f"/v1/sandboxes/{sid}", headers=world.owner.h).status_code == 204
        r = client.post("/v1/sandboxes", headers=other, json={})
        assert r.status_code == 201, r.text  # the refused attempt did not keep the key
        assert "idempotent-replayed" not in r.headers
    finally:
        client.close()
