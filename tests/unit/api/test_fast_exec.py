"""The exec fast path answers exactly like the routed endpoint, and takes the common case."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, select
from starlette.types import Message

from hutch.api import fast_exec
from hutch.api.deps import EXEC_BODY_MAX, Services
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
