"""Every error is RFC 9457 problem+json with a stable code."""

from __future__ import annotations

import pytest

from hutch.models.common import ERROR_STATUS, ErrorCode, Problem
from tests.unit.api.conftest import Client, World

PROBLEM = "application/problem+json"


def _problem(r) -> dict:  # type: ignore[no-untyped-def]
    assert r.headers["content-type"] == PROBLEM, r.text
    body = r.json()
    Problem.model_validate(body)
    assert body["status"] == r.status_code
    assert body["title"] and body["detail"]
    assert (
        ERROR_STATUS[ErrorCode(body["code"])] == r.status_code or body["code"] == "invalid_request"
    )
    return body


def test_unknown_route_is_a_404_problem(client: Client) -> None:
    body = _problem(client.get("/v1/nothing-here"))
    assert body["code"] == "not_found" and "/v1/nothing-here" in body["detail"]


def test_wrong_method_is_a_problem(client: Client, world: World) -> None:
    r = client.put("/v1/me", headers=world.owner.h)
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM


def test_validation_errors_name_each_field_and_what_is_allowed(
    client: Client, world: World
) -> None:
    r = client.post(
        "/v1/sandboxes",
        headers=world.owner.h,
        json={"vcpu": 64, "memory_mb": 1, "isolation": "vm", "template": "Bad Name", "nope": 1},
    )
    body = _problem(r)
    assert r.status_code == 422 and body["code"] == "invalid_request"
    errors = {e["field"]: e for e in body["errors"]}
    assert errors["vcpu"]["allowed"] == {"le": 16}
    assert errors["memory_mb"]["allowed"] == {"ge": 128}
    assert errors["isolation"]["allowed"] == ["namespace", "gvisor"]
    assert "pattern" in errors["template"]["allowed"]
    assert errors["nope"]["type"] == "extra_forbidden"
    for field in ("vcpu", "memory_mb", "isolation", "template", "nope"):
        assert field in body["detail"]


def test_validation_errors_never_echo_input(client: Client, world: World) -> None:
    secret = "s3cr3t-VALUE-never-echoed"
    r = client.post(
        "/v1/sandboxes",
        headers=world.owner.h,
        json={"env": {"1BAD": secret}, "metadata": {"k": 5}, "vcpu": secret},
    )
    assert r.status_code == 422
    assert secret not in r.text


def test_malformed_json_is_a_422_problem(client: Client, world: World) -> None:
    r = client.post(
        "/v1/projects",
        headers={**world.owner.h, "Content-Type": "application/json"},
        content=b"{not json",
    )
    body = _problem(r)
    assert body["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/sandboxes/sbx_01hzzzzzzzzzzzzzzzzzzzzzzz", "sandbox_not_found"),
        ("/v1/projects/prj_01hzzzzzzzzzzzzzzzzzzzzzzz", "not_found"),
        ("/v1/teams/whatever", "not_found"),
    ],
)
def test_missing_resources_are_404_problems(
    client: Client, world: World, path: str, code: str
) -> None:
    body = _problem(client.get(path, headers=world.owner.h))
    assert body["code"] == code


def test_metadata_is_bounded(client: Client, world: World) -> None:
    too_many = {f"k{i}": "v" for i in range(33)}
    for meta in (too_many, {"bad key": "v"}, {"k": "x" * 513}):
        r = client.post("/v1/sandboxes", headers=world.owner.h, json={"metadata": meta})
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"].startswith("metadata")


def test_runner_errors_keep_their_code(client: Client, world: World) -> None:
    body = _problem(client.post("/v1/sandboxes", headers=world.owner.h, json={"template": "nope"}))
    assert body["code"] == "template_not_found"


def test_openapi_and_docs_are_served(client: Client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Hutch API"
    assert "/v1/sandboxes" in spec["paths"] and "/v1/keys/{key_id}/rotate" in spec["paths"]
    assert "Idempotency-Key" in str(spec["paths"]["/v1/sandboxes"]["post"])
    assert client.get("/docs").status_code == 200


def test_oversized_json_bodies_are_refused_but_uploads_are_not(
    client: Client, world: World
) -> None:
    big = {"name": "x", "pad": "y" * (2 << 20)}
    r = client.post("/v1/projects", headers=world.owner.h, json=big)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    r = client.put(
        f"/v1/sandboxes/{sbx}/files",
        headers=world.owner.h,
        params={"path": "/big"},
        content=b"z" * (9 << 20),
    )
    assert r.status_code == 200 and r.json()["size"] == 9 << 20
