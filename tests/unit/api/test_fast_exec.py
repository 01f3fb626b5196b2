"""The exec fast path answers exactly like the routed endpoint, and takes the common case."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, select
from starlette.types import Message

from hutch.api import fast_exec
from hutch.api.deps import BODY_MAX, EXEC_BODY_MAX, Services
from hutch.db.audit import ExecAuditRow, UsageRow
from tests.unit.api.conftest import AppFactory, Client, build_world

# How the fast path takes a request: answers it, reads it and hands it on, or leaves it alone.
FAST, HANDED_ON, ROUTED = ["read"], ["read", "handed on"], list[str]()
VOLATILE = {"pid", "started_at", "ended_at", "duration_ms", "instance"}


def _stable(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _stable(v) for k, v in body.items() if k not in VOLATILE}
    if isinstance(body, list):
        return [_stable(v) for v in body]
    return body


async def _chunks() -> AsyncIterator[bytes]:
    yield b'{"cmd": '
    yield b'["true"]}'


@pytest.fixture
def path_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Per request to a fast app: "read" when the fast path read the body, "handed on" when it
    then passed the request to the routed endpoint."""
    taken: list[str] = []
    admit, replay = fast_exec.FastExec._admit, fast_exec._replay

    async def admitting(self: fast_exec.FastExec, *a: Any) -> Any:
        taken.append("read")
        return await admit(self, *a)

    def replaying(*a: Any) -> Any:
        taken.append("handed on")
        return replay(*a)

    monkeypatch.setattr(fast_exec.FastExec, "_admit", admitting)
    monkeypatch.setattr(fast_exec, "_replay", replaying)
    return taken


def test_fast_and_routed_exec_answer_alike(make_app: AppFactory, path_taken: list[str]) -> None:
    fast_app, routed_app = make_app(), make_app(fast_exec=False)
    svc: Services = fast_app.state.services
    world = build_world(svc)
    fast, routed = Client(fast_app), Client(routed_app)
    try:
        sid = fast.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
        stopped = fast.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
        assert fast.delete(f"/v1/sandboxes/{stopped}", headers=world.owner.h).status_code == 204
        revoked = fast.post("/v1/keys", headers=world.owner.h, json={"name": "old"}).json()
        r = fast.delete(f"/v1/keys/{revoked['key_id']}", headers=world.owner.h)
        assert r.status_code == 204
        path = f"/v1/sandboxes/{sid}/exec"
        own = world.owner.h
        as_json = {**own, "content-type": "application/json"}
        true = {"cmd": ["true"]}
        # (what, url, headers, request body; how the fast path takes it)
        cases: list[tuple[str, str, Any, dict[str, Any], list[str]]] = [
            (
                "exit 3",
                path,
                own,
                {"json": {"cmd": ["sh", "-c", "echo o; echo e >&2; exit 3"]}},
                FAST,
            ),
            ("background", path, own, {"json": {"cmd": ["true"], "background": True}}, FAST),
            ("no such program", path, own, {"json": {"cmd": ["/no/such/program"]}}, FAST),
            (
                "charset",
                path,
                {**own, "content-type": "application/json; charset=utf-8"},
                {"content": b'{"cmd": ["true"]}'},
                FAST,
            ),
            ("no key", path, {}, {"json": true}, FAST),
            ("unknown key", path, {"Authorization": "Bearer sk_live_nope"}, {"json": true}, FAST),
            (
                "revoked key",
                path,
                {"Authorization": f"Bearer {revoked['key']}"},
                {"json": true},
                FAST,
            ),
            ("viewer", path, world.viewer.h, {"json": true}, FAST),
            ("other project", path, world.other.h, {"json": true}, FAST),
            ("stopped", f"/v1/sandboxes/{stopped}/exec", own, {"json": true}, FAST),
            ("no such sandbox", "/v1/sandboxes/sbx_nope/exec", own, {"json": true}, FAST),
            ("no key, bad body", path, {}, {"json": {"cmd": []}}, FAST),
            ("empty cmd", path, own, {"json": {"cmd": []}}, HANDED_ON),
            ("unknown field", path, own, {"json": {"cmd": ["true"], "bogus": 1}}, HANDED_ON),
            ("text/plain", path, {**own, "content-type": "text/plain"}, {"json": true}, ROUTED),
            ("no content type", path, own, {"content": b'{"cmd": ["true"]}'}, ROUTED),
            ("empty body", path, as_json, {"content": b""}, ROUTED),
            ("not JSON", path, as_json, {"content": b"{not json"}, HANDED_ON),
            (
                "not JSON, no key",
                path,
                {"content-type": "application/json"},
                {"content": b"{not json"},
                HANDED_ON,
            ),
            ("not UTF-8", path, as_json, {"content": b'{"cmd": ["\xff"]}'}, HANDED_ON),
            ("too deep", path, as_json, {"content": b"[" * 100_000}, HANDED_ON),
            ("chunked", path, as_json, {"content": _chunks()}, ROUTED),
            ("too large", path, as_json, {"content": b" " * (EXEC_BODY_MAX + 1)}, ROUTED),
            ("id too long", f"/v1/sandboxes/{'x' * 65}/exec", own, {"json": true}, ROUTED),
            (
                "two content types",  # the first counts, as Starlette reads headers
                path,
                [
                    *own.items(),
                    ("content-type", "text/plain"),
                    ("content-type", "application/json"),
                ],
                {"content": b'{"cmd": ["true"]}'},
                ROUTED,
            ),
        ]
        for what, url, headers, body, expected in cases:
            path_taken.clear()
            a = fast.post(url, headers=headers, **body)
            assert path_taken == expected, what
            if what == "chunked":
                body = {"content": _chunks()}
            b = routed.post(url, headers=headers, **body)
            assert (a.status_code, a.headers.get("content-type")) == (
                b.status_code,
                b.headers.get("content-type"),
            ), (what, a.text, b.text)
            assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate"), what
            assert _stable(a.json()) == _stable(b.json()), (what, a.text, b.text)
    finally:
        fast.close()
        routed.close()


def test_fast_path_keeps_the_logs_and_the_exec_trail(make_app: AppFactory) -> None:
    """The API usage log and the exec audit trail read the same for either path."""
    fast_app, routed_app = make_app(), make_app(fast_exec=False)
    svc: Services = fast_app.state.services
    world = build_world(svc)
    fast, routed = Client(fast_app), Client(routed_app)
    try:
        r = fast.patch(
            f"/v1/projects/{world.project_id}", headers=world.owner.h, json={"audit_exec": True}
        )
        assert r.status_code == 200
        sid = fast.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
        rows = {}
        for name, client, app in (("fast", fast, fast_app), ("routed", routed, routed_app)):
            usage = app.state.services.usage_log
            usage.flush()
            with svc.db.session() as s:
                s.execute(delete(UsageRow))
                s.execute(delete(ExecAuditRow))
                s.commit()
            ok = client.post(
                f"/v1/sandboxes/{sid}/exec", headers=world.owner.h, json={"cmd": ["echo", "x"]}
            )
            assert ok.status_code == 200 and ok.json()["stdout"] == "x\n"
            bad = client.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": ["true"]})
            assert bad.status_code == 401
            usage.flush()
            with svc.db.session() as s:
                rows[name] = (
                    [
                        (u.method, u.route, u.status, u.sandbox_id, u.key_prefix)
                        for u in s.scalars(select(UsageRow).order_by(UsageRow.id))
                    ],
                    [
                        (e.sandbox_id, e.command, e.kind, e.exit_code)
                        for e in s.scalars(select(ExecAuditRow))
                    ],
                )
        assert rows["fast"] == rows["routed"]
        usage_rows, audit_rows = rows["fast"]
        assert usage_rows == [
            ("POST", "/v1/sandboxes/{sandbox_id}/exec", 200, sid, world.owner.key[:12]),
            ("POST", "/v1/sandboxes/{sandbox_id}/exec", 401, sid, None),
        ]
        assert audit_rows == [(sid, "echo", "exec", 0)]
    finally:
        fast.close()
        routed.close()


async def _call(app: Any, scope: dict[str, Any], incoming: list[Message]) -> list[Message]:
    """Run one ASGI request; the response-start messages it sent (headers left out)."""
    out: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            out.append({k: v for k, v in message.items() if k != "headers"})

    await app(scope, receive, send)
    return out


def test_client_leaving_mid_body_is_handled_as_routed(
    make_app: AppFactory, path_taken: list[str]
) -> None:
    fast_app, routed_app = make_app(), make_app(fast_exec=False)
    world = build_world(fast_app.state.services)
    fast = Client(fast_app)
    headers = [(k.lower().encode(), v.encode()) for k, v in world.owner.h.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/sandboxes/sbx_gone/exec",
        "raw_path": b"/v1/sandboxes/sbx_gone/exec",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"hutch.test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
            *headers,
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("hutch.test", 80),
    }
    try:
        sent = {
            name: fast.run(
                _call(
                    app,
                    dict(scope, state={}),
                    [
                        {"type": "http.request", "body": b'{"cmd": ', "more_body": True},
                        {"type": "http.disconnect"},
                    ],
                )
            )
            for name, app in (("fast", fast_app), ("routed", routed_app))
        }
        assert path_taken == ["handed on"]
        assert sent["fast"] == sent["routed"] and sent["fast"], sent
    finally:
        fast.close()


def test_fast_and_routed_create_answer_alike(make_app: AppFactory, path_taken: list[str]) -> None:
    fast_app, routed_app = make_app(), make_app(fast_exec=False)
    svc: Services = fast_app.state.services
    world = build_world(svc)
    fast, routed = Client(fast_app), Client(routed_app)
    own = world.owner.h
    as_json = {**own, "content-type": "application/json"}
    small = {"timeout_s": 60, "metadata": {"k": "v"}}
    made: list[str] = []
    # (what, headers, request body; how the fast path takes it)
    cases: list[tuple[str, Any, dict[str, Any], list[str]]] = [
        ("create", own, {"json": small}, FAST),
        ("create with a key", {**own, "Idempotency-Key": "k-1"}, {"json": small}, FAST),
        # the routed app replays the fast app's first answer (one store of keys), and back
        ("replay", {**own, "Idempotency-Key": "k-1"}, {"json": small}, FAST),
        ("same key, other body", {**own, "Idempotency-Key": "k-1"}, {"json": {}}, FAST),
        ("no key", {}, {"json": small}, FAST),
        ("unknown key", {"Authorization": "Bearer sk_live_nope"}, {"json": small}, FAST),
        ("viewer", world.viewer.h, {"json": small}, FAST),
        ("no key, bad body", {}, {"json": {"vcpu": 999}}, FAST),
        ("bad size", own, {"json": {"vcpu": 999}}, HANDED_ON),
        ("unknown field", own, {"json": {"bogus": 1}}, HANDED_ON),
        ("not an object", own, {"json": [1]}, HANDED_ON),
        ("blank key", {**own, "Idempotency-Key": "a b"}, {"json": small}, HANDED_ON),
        ("long key", {**own, "Idempotency-Key": "k" * 256}, {"json": small}, HANDED_ON),
        ("blank key, bad body", {**own, "Idempotency-Key": "a b"}, {"json": [1]}, HANDED_ON),
        ("not JSON", as_json, {"content": b"{not json"}, HANDED_ON),
        ("text/plain", {**own, "content-type": "text/plain"}, {"json": small}, ROUTED),
        ("no content type", own, {"content": b"{}"}, ROUTED),
        ("empty body", as_json, {"content": b""}, ROUTED),
        ("too large", as_json, {"content": b" " * (BODY_MAX + 1)}, ROUTED),
    ]
    try:
        for what, headers, body, expected in cases:
            path_taken.clear()
            a = fast.post("/v1/sandboxes", headers=headers, **body)
            assert path_taken == expected, what
            b = routed.post("/v1/sandboxes", headers=headers, **body)
            made += [r.json()["sandbox_id"] for r in (a, b) if r.status_code == 201]
            assert (a.status_code, a.headers.get("content-type")) == (
                b.status_code,
                b.headers.get("content-type"),
            ), (what, a.text, b.text)
            assert a.headers.get("retry-after") == b.headers.get("retry-after"), what
            assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate"), what
            if what == "create with a key":  # the routed app replays the fast app's answer
                assert "idempotent-replayed" not in a.headers
                assert b.headers["idempotent-replayed"] == "true" and a.content == b.content
            if what == "replay":  # the same answer again, sandbox id and all
                assert a.content == b.content and a.headers["idempotent-replayed"] == "true"
                assert a.json()["sandbox_id"] in made
                continue
            skip = {"sandbox_id", "created_at", "expires_at"} if a.status_code == 201 else set()
            assert {k: v for k, v in _stable(a.json()).items() if k not in skip} == {
                k: v for k, v in _stable(b.json()).items() if k not in skip
            }, (what, a.text, b.text)
        assert fast.get("/v1/sandboxes", headers=own).json()["items"][0]["metadata"] == {"k": "v"}
    finally:
        for sid in set(made):
            fast.delete(f"/v1/sandboxes/{sid}", headers=own)
        fast.close()
        routed.close()


def test_fast_create_is_rate_limited_and_logged_as_routed(make_app: AppFactory) -> None:
    """A refused create answers 429 with Retry-After through either path, and the usage log
    records the create route for both."""
    fast_app = make_app(create_rate_per_minute=1)
    routed_app = make_app(fast_exec=False, create_rate_per_minute=1)
    world = build_world(fast_app.state.services)
    made = []
    for app in (fast_app, routed_app):
        client = Client(app)
        try:
            first = client.post("/v1/sandboxes", headers=world.owner.h, json={})
            assert first.status_code == 201, first.text
            made.append(first.json()["sandbox_id"])
            second = client.post("/v1/sandboxes", headers=world.owner.h, json={})
            assert second.status_code == 429 and second.headers["retry-after"], second.text
            assert second.json()["code"] == "rate_limited"
            client.delete(f"/v1/sandboxes/{made[-1]}", headers=world.owner.h)
            usage = app.state.services.usage_log
            usage.flush()
        finally:
            client.close()
    with fast_app.state.services.db.session() as s:
        routes = [
            (u.route, u.status)
            for u in s.scalars(select(UsageRow).where(UsageRow.method == "POST"))
        ]
    assert routes.count(("/v1/sandboxes", 201)) == 2 and routes.count(("/v1/sandboxes", 429)) == 2
