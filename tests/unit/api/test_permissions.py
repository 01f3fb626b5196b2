"""The permission matrix: every route, every role, another team's key.

Expected answers are written out, not derived from the code under test: the smallest role that may
use the route gets its success status, weaker roles 403, and the owner of another team 404 for
team A's resources (or its own success where the route acts on its own project).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hutch.api.deps import Services
from hutch.api.routers.ports import PROXY_METHODS
from hutch.db.audit import SuspensionRow
from hutch.models.api import Mode, Role
from hutch.services.permissions import role_scopes
from tests.unit.api.conftest import Client, Who, World, add_user

RANK = {"viewer": 0, "member": 1, "admin": 2, "owner": 3, "root": 4}
PRINCIPALS = ("viewer", "member", "admin", "owner", "root", "other")
_seq = itertools.count()


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    min_role: str
    ok: int
    other: int = 404
    body: Callable[[dict[str, str]], Any] | None = None
    content: bytes | None = None
    # Resources made anew for each caller (the call uses them up); others are shared per case.
    fresh: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _unique(_: dict[str, str]) -> dict[str, str]:
    return {"email": f"u{next(_seq)}@example.test", "name": "n"}


SBX = "/v1/sandboxes/{sbx}"
SECRETS = "/v1/projects/{project}/secrets"
USER = "/v1/users/{target}"
CASES = [
    Case("GET", "/v1/me", "viewer", 200, other=200),
    Case("GET", "/v1/users", "root", 200, other=403),
    Case("POST", "/v1/users", "root", 201, other=403, body=_unique),
    Case("POST", "/v1/teams", "owner", 201, other=201, body=lambda p: {"name": "t"}),
    Case("GET", "/v1/teams", "viewer", 200, other=200),
    Case("GET", "/v1/teams/{team}", "viewer", 200),
    Case("GET", "/v1/teams/{team}/members", "viewer", 200),
    Case(
        "POST",
        "/v1/teams/{team}/members",
        "admin",
        201,
        fresh=("loner",),
        body=lambda p: {"user_id": p["loner"], "role": "member"},
    ),
    Case(
        "PATCH",
        "/v1/teams/{team}/members/{target}",
        "admin",
        200,
        body=lambda p: {"role": "member"},
    ),
    Case("DELETE", "/v1/teams/{team}/members/{target}", "admin", 204, fresh=("target",)),
    Case(
        "POST",
        "/v1/projects",
        "admin",
        201,
        body=lambda p: {"name": f"p{next(_seq)}", "team_id": p["team"]},
    ),
    Case("GET", "/v1/projects", "viewer", 200, other=200),
    Case("GET", "/v1/projects/{project}", "viewer", 200),
    Case(
        "PATCH", "/v1/projects/{project}", "admin", 200, body=lambda p: {"name": f"r{next(_seq)}"}
    ),
    Case(
        "POST", "/v1/keys", "viewer", 201, body=lambda p: {"name": "k", "project_id": p["project"]}
    ),
    Case("GET", "/v1/keys", "viewer", 200, other=200),
    Case("POST", "/v1/keys/{own_key}/rotate", "viewer", 201, other=201, body=lambda p: {}),
    Case(
        "POST", "/v1/keys/{their_key}/rotate", "admin", 201, body=lambda p: {}, fresh=("their_key",)
    ),
    Case("DELETE", "/v1/keys/{own_key}", "viewer", 204, other=204),
    Case("DELETE", "/v1/keys/{their_key}", "admin", 204, fresh=("their_key",)),
    Case(
        "POST", "/v1/sandboxes", "member", 201, other=201, body=lambda p: {"metadata": {"a": "b"}}
    ),
    Case("GET", "/v1/sandboxes", "viewer", 200, other=200),
    Case("GET", "/v1/templates", "viewer", 200, other=200),
    Case("GET", "/v1/templates/base", "viewer", 200, other=200),
    Case("GET", SBX, "viewer", 200),
    Case("GET", SBX + "/network", "viewer", 200),
    Case("GET", SBX + "/ports/8000", "viewer", 200),
    Case("PUT", SBX + "/ports/8000", "member", 200, body=lambda p: {"public": False}),
    Case("POST", SBX + "/ports/8000/token", "member", 201, body=lambda p: {"expires_in": 60}),
    # The proxy itself: past the access check, nothing listens on the port (502).
    *(Case(m, SBX + "/ports/8000/x", "member", 502) for m in PROXY_METHODS if m != "HEAD"),
    Case("PUT", SBX + "/network", "member", 200, body=lambda p: {"allow_cidrs": ["198.18.0.0/24"]}),
    Case("DELETE", SBX, "member", 204, fresh=("sbx",)),
    Case("POST", SBX + "/timeout", "member", 200, body=lambda p: {"timeout_s": 600}),
    Case("GET", SBX + "/stats", "viewer", 200),
    Case("POST", SBX + "/exec", "member", 200, body=lambda p: {"cmd": ["echo", "hi"]}),
    Case("GET", SBX + "/processes", "viewer", 200),
    Case("POST", SBX + "/processes/{pid}/signal", "member", 204, body=lambda p: {"signal": 15}),
    Case("POST", SBX + "/processes/{pid}/stdin", "member", 204, body=lambda p: {"data": "x"}),
    Case("POST", SBX + "/processes/{pid}/wait", "member", 200),
    Case("GET", SBX + "/files?path=/home/user/f.txt", "viewer", 200),
    Case("PUT", SBX + "/files?path=/home/user/new.txt", "member", 200, content=b"data"),
    Case("GET", SBX + "/files/list?path=/home/user", "viewer", 200),
    Case("GET", SBX + "/files/stat?path=/home/user/f.txt", "viewer", 200),
    Case("GET", SBX + "/files/exists?path=/home/user/f.txt", "viewer", 200),
    Case("POST", SBX + "/files/mkdir", "member", 200, body=lambda p: {"path": "/home/user/d"}),
    Case(
        "POST",
        SBX + "/files/rename",
        "member",
        200,
        fresh=("sbx",),
        body=lambda p: {"src": "/home/user/f.txt", "dst": "/home/user/g.txt"},
    ),
    Case("DELETE", SBX + "/files?path=/home/user/f.txt", "member", 204, fresh=("sbx",)),
    Case("GET", "/v1/billing/summary", "admin", 200, other=200),
    Case("GET", "/v1/billing/usage?group_by=sandbox", "admin", 200, other=200),
    Case("GET", "/v1/billing/usage.csv", "admin", 200, other=200),
    Case("GET", "/v1/billing/credits", "admin", 200, other=200),
    Case(
        "POST",
        "/v1/billing/credits",
        "root",
        201,
        other=403,
        body=lambda p: {"team_id": p["team"], "amount": "1.5"},
    ),
    Case("GET", "/v1/billing/invoices", "admin", 200, other=200),
    Case("GET", "/v1/billing/invoices/upcoming", "admin", 200, other=200),
    Case("GET", "/v1/billing/invoices/upcoming/html", "admin", 200, other=200),
    Case("POST", "/v1/billing/payment-method", "admin", 200, other=200),
    Case("GET", "/v1/audit/execs", "admin", 200, other=200),
    Case("GET", "/v1/audit/execs/export?format=csv", "admin", 200, other=200),
    Case("GET", "/v1/audit/admin-log", "root", 200, other=403),
    Case("GET", "/v1/audit/admin-log/verify", "root", 200, other=403),
    Case("GET", "/v1/admin/{subjects}/{suspended}/suspension", "root", 200, other=403),
    Case(
        "POST",
        "/v1/admin/{subjects}/{victim}/suspend",
        "root",
        200,
        other=403,
        fresh=("victim",),
        body=lambda p: {"reason": "abuse"},
    ),
    Case(
        "POST",
        "/v1/admin/{subjects}/{suspended}/unsuspend",
        "root",
        204,
        other=403,
        fresh=("suspended",),
        body=lambda p: {"reason": "appeal granted"},
    ),
    Case(
        "POST",
        "/v1/admin/{subjects}/{victim}/terminate",
        "root",
        200,
        other=403,
        fresh=("victim",),
        body=lambda p: {"reason": "abuse"},
    ),
    # project secrets
    Case(
        "PUT",
        SECRETS + "/{newname}",
        "admin",
        201,
        fresh=("newname",),
        body=lambda p: {"value": "v"},
    ),
    Case("GET", SECRETS, "viewer", 200),
    Case("GET", SECRETS + "/{secret}", "viewer", 200),
    Case("DELETE", SECRETS + "/{secret}", "admin", 204, fresh=("secret",)),
    Case("POST", "/v1/secrets/rewrap", "root", 200, other=403, body=lambda p: {}),
    # data-subject rights: the caller's own account
    Case("PATCH", "/v1/me", "viewer", 200, other=200, body=lambda p: {"name": "N"}),
    Case("GET", "/v1/me/privacy", "viewer", 200, other=200),
    Case("GET", "/v1/me/export", "viewer", 200, other=200),
    Case("PUT", "/v1/me/restriction", "viewer", 200, other=200),
    Case("DELETE", "/v1/me/restriction", "viewer", 200, other=200),
    Case("PUT", "/v1/me/objections", "viewer", 200, other=200, body=lambda p: {"purposes": []}),
    Case("DELETE", "/v1/me?confirm={my_email}", "viewer", 202, other=202, fresh=("my_email",)),
    # ...and, for server administrators, anyone's
    Case("PATCH", USER, "root", 200, other=403, body=lambda p: {"name": "N"}),
    Case("GET", USER + "/privacy", "root", 200, other=403),
    Case("GET", USER + "/export", "root", 200, other=403),
    Case("PUT", USER + "/restriction", "root", 200, other=403),
    Case("DELETE", USER + "/restriction", "root", 200, other=403),
    Case("PUT", USER + "/objections", "root", 200, other=403, body=lambda p: {"purposes": []}),
    Case("DELETE", USER + "?confirm={target_email}", "root", 202, other=403),
]


@dataclass
class Fixtures:
    """Fresh team-A resources for one call, created only when the path or body needs them."""

    client: Client
    svc: Services
    world: World
    caller: Who
    made: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        if name not in self.made:
            self.made[name] = getattr(self, f"_{name}")()
        return self.made[name]

    def _team(self) -> str:
        return self.world.team_id

    def _project(self) -> str:
        return self.world.project_id

    def _sbx(self) -> str:
        r = self.client.post("/v1/sandboxes", headers=self.world.owner.h, json={})
        assert r.status_code == 201, r.text
        sbx = r.json()["sandbox_id"]
        up = self.client.put(
            f"/v1/sandboxes/{sbx}/files?path=/home/user/f.txt",
            headers=self.world.owner.h,
            content=b"hello",
        )
        assert up.status_code == 200
        return str(sbx)

    def _pid(self) -> str:
        r = self.client.post(
            f"/v1/sandboxes/{self['sbx']}/exec",
            headers=self.world.owner.h,
            json={"cmd": ["sleep", "9"], "background": True},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["pid"])

    def _loner(self) -> str:
        """A user who is not in team A."""
        return add_user(
            self.svc, self.world.other_team_id, self.world.other_project_id, Role.viewer
        ).user_id

    def _target(self) -> str:
        return add_user(self.svc, self.world.team_id, self.world.project_id, Role.viewer).user_id

    def _newname(self) -> str:
        return f"S{next(_seq)}"

    def _secret(self) -> str:
        name = f"S{next(_seq)}"
        r = self.client.put(
            f"/v1/projects/{self.world.project_id}/secrets/{name}",
            headers=self.world.owner.h,
            json={"value": "v"},
        )
        assert r.status_code == 201, r.text
        return name

    def _my_email(self) -> str:
        return f"{self.caller.user_id}@example.test"

    def _target_email(self) -> str:
        return f"{self['target']}@example.test"

    def _own_key(self) -> str:
        c = self.caller
        project = self.world.other_project_id if c is self.world.other else self.world.project_id
        with self.svc.db.session() as s:
            row, _ = self.svc.keys.issue(
                s,
                user_id=c.user_id,
                project_id=project,
                name="own",
                mode=Mode.live,
                scopes=role_scopes(c.role),
            )
            s.commit()
        return row.id

    def _subjects(self) -> str:
        return "users"

    def _victim(self) -> str:
        return add_user(self.svc, self.world.team_id, self.world.project_id, Role.viewer).user_id

    def _suspended(self) -> str:
        victim = self._victim()
        with self.svc.db.session() as s:
            s.add(
                SuspensionRow(
                    subject_type="user",
                    subject_id=victim,
                    state="suspended",
                    reason="test",
                    at=self.svc.clock.now(),
                )
            )
            s.commit()
        return victim

    def _their_key(self) -> str:
        return add_user(self.svc, self.world.team_id, self.world.project_id, Role.member).key_id


def expected(case: Case, who: str) -> int:
    if who == "other":
        return case.other
    return case.ok if RANK[who] >= RANK[case.min_role] else 403


class _Fmt(dict[str, str]):
    def __init__(self, fx: Fixtures) -> None:
        super().__init__()
        self.fx = fx

    def __missing__(self, key: str) -> str:
        return self.fx[key]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_route_permissions(case: Case, client: Client, svc: Services, world: World) -> None:
    got: dict[str, int] = {}
    want: dict[str, int] = {}
    codes: dict[str, str] = {}
    fx = Fixtures(client, svc, world, world.owner)
    for who in PRINCIPALS:
        caller = fx.caller = world.users[who]
        for name in (*case.fresh, "own_key"):
            fx.made.pop(name, None)
        path = case.path.format_map(_Fmt(fx))
        kwargs: dict[str, Any] = {"headers": caller.h}
        if case.body is not None:
            kwargs["json"] = case.body(_Fmt(fx))
        if case.content is not None:
            kwargs["content"] = case.content
        r = client.request(case.method, path, **kwargs)
        got[who], want[who] = r.status_code, expected(case, who)
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json", r.text
            codes[who] = r.json()["code"]
    assert got == want, f"{case.id}: {codes}"
    allowed = {403: ("forbidden",), 404: ("not_found", "sandbox_not_found")}
    allowed[502] = ("port_unreachable",)
    for who, code in codes.items():
        assert code in allowed[got[who]], (who, code)


def test_every_route_is_in_the_matrix(app: Any) -> None:
    """A new route must be added to the matrix (or to the short list of routes without auth)."""
    public = {
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("POST", "/v1/billing/webhooks/stripe"),  # authenticated by its signature
        # Answers carry no body to check; the same handler as GET, which the matrix covers.
        ("HEAD", "/v1/sandboxes/{sandbox_id}/ports/{port}/{path}"),
    }
    covered = {
        (
            c.method,
            c.path.split("?")[0]
            .replace("{team}", "{team_id}")
            .replace("{project}", "{project_id}")
            .replace("{sbx}", "{sandbox_id}")
            .replace("{target}", "{user_id}")
            .replace("{newname}", "{name}")
            .replace("{secret}", "{name}")
            .replace("{own_key}", "{key_id}")
            .replace("{their_key}", "{key_id}")
            .replace("/upcoming", "/{invoice_id}")
            .replace("/v1/templates/base", "/v1/templates/{name}")
            .replace("/ports/8000/x", "/ports/{port}/{path}")
            .replace("/ports/8000", "/ports/{port}")
            .replace("{victim}", "{subject_id}")
            .replace("{suspended}", "{subject_id}"),
        )
        for c in CASES
    }
    routes = set()
    for r in app.routes:
        for m in getattr(r, "methods", None) or ():
            if m != "HEAD":
                routes.add((m, r.path))
    # Included routers are not listed one by one in `app.routes` on every FastAPI version;
    # the OpenAPI document lists every HTTP route.
    for path, ops in app.openapi()["paths"].items():
        routes |= {(m.upper(), path) for m in ops}
    assert len(routes) > 30
    assert routes - public - covered == set()


def test_lists_show_nothing_of_other_teams(client: Client, world: World) -> None:
    client.post("/v1/sandboxes", headers=world.owner.h, json={})
    for path in ("/v1/sandboxes", "/v1/keys", "/v1/projects", "/v1/teams"):
        body = client.get(path, headers=world.other.h).json()
        text = repr(body)
        assert world.project_id not in text and world.team_id not in text, path


def test_test_mode_keys_see_only_test_mode_sandboxes(client: Client, world: World) -> None:
    live = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()
    test = client.post("/v1/sandboxes", headers=world.test.h, json={}).json()
    assert (live["mode"], test["mode"]) == ("live", "test")

    def ids(h: dict[str, str]) -> set[str]:
        return {s["sandbox_id"] for s in client.get("/v1/sandboxes", headers=h).json()["items"]}

    assert ids(world.test.h) == {test["sandbox_id"]}
    assert ids(world.owner.h) == {live["sandbox_id"]}
    r = client.get(f"/v1/sandboxes/{live['sandbox_id']}", headers=world.test.h)
    assert (r.status_code, r.json()["code"]) == (404, "sandbox_not_found")
    assert (
        client.delete(f"/v1/sandboxes/{live['sandbox_id']}", headers=world.test.h).status_code
        == 404
    )
    assert (
        client.get(f"/v1/sandboxes/{test['sandbox_id']}", headers=world.owner.h).status_code == 404
    )


def test_exec_stream_refuses_by_role_and_tenancy(
    client: Client, ws_client: TestClient, world: World
) -> None:
    sbx = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    url = f"/v1/sandboxes/{sbx}/exec/stream"
    for who, close_code, code in (
        ("viewer", 4403, "forbidden"),
        ("other", 4404, "sandbox_not_found"),
    ):
        with ws_client.websocket_connect(url, headers=world.users[who].h) as ws:
            frame = ws.receive_json()
            assert frame == {"type": "error", "code": code, "detail": frame["detail"]}
            msg = ws.receive()
            assert msg["type"] == "websocket.close" and msg["code"] == close_code
    with ws_client.websocket_connect(url) as ws:
        assert ws.receive_json()["code"] == "unauthenticated"


def test_only_owners_manage_owners(client: Client, world: World) -> None:
    base = f"/v1/teams/{world.team_id}/members"
    r = client.patch(
        f"{base}/{world.member.user_id}", headers=world.admin.h, json={"role": "owner"}
    )
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    r = client.delete(f"{base}/{world.owner.user_id}", headers=world.admin.h)
    assert r.status_code == 403
    r = client.patch(
        f"{base}/{world.member.user_id}", headers=world.owner.h, json={"role": "owner"}
    )
    assert r.status_code == 200 and r.json()["role"] == "owner"


def test_last_owner_cannot_leave(client: Client, world: World) -> None:
    base = f"/v1/teams/{world.other_team_id}/members/{world.other.user_id}"
    r = client.patch(base, headers=world.other.h, json={"role": "admin"})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    assert client.delete(base, headers=world.other.h).status_code == 409
