"""The `Hutch` admin client's team and membership calls: paths, bodies, headers and paging,
driven through httpx's transport hook."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from hutch.models.api import Member, MemberAdd, MemberUpdate, Role, Team, TeamCreate
from hutch.sdk._http import SyncHttp
from hutch.sdk.client import Hutch
from hutch.sdk.config import ConnectionConfig, RetryPolicy
from hutch.sdk.exceptions import InvalidRequestError, NotFoundError

CFG = ConnectionConfig("http://hutch.test", "sk_test_k", 5, RetryPolicy(3, 0, 0))
TEAM = {"team_id": "team_1", "name": "ml", "created_at": "2030-01-01T00:00:00Z", "role": "owner"}
MEMBER = {
    "team_id": "team_1",
    "user_id": "usr_1",
    "role": "viewer",
    "created_at": "2030-01-01T00:00:00Z",
}

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def client() -> Iterator[tuple[Hutch, list[httpx.Request], list[Handler]]]:
    """A client whose requests are recorded and answered by the handler the test sets."""
    seen: list[httpx.Request] = []
    answer: list[Handler] = [lambda req: httpx.Response(200, json={})]

    def transport(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return answer[0](req)

    h = Hutch(config=CFG)
    h._http.close()
    h._http = SyncHttp(
        CFG,
        httpx.Client(
            transport=httpx.MockTransport(transport), base_url=CFG.api_url, headers=CFG.headers()
        ),
    )
    with h:
        yield h, seen, answer


def _body(req: httpx.Request) -> object:
    return json.loads(req.content)


def test_teams_follow_every_page(client: tuple[Hutch, list[httpx.Request], list[Handler]]) -> None:
    h, seen, answer = client
    second = {**TEAM, "team_id": "team_2", "role": "viewer"}

    def pages(req: httpx.Request) -> httpx.Response:
        if req.url.params.get("cursor") == "c1":
            return httpx.Response(200, json={"items": [second], "next_cursor": None})
        return httpx.Response(200, json={"items": [TEAM], "next_cursor": "c1"})

    answer[0] = pages
    assert h.teams() == [TEAM, second]
    assert [(r.method, r.url.path, r.url.query) for r in seen] == [
        ("GET", "/v1/teams", b""),
        ("GET", "/v1/teams", b"cursor=c1"),
    ]
    assert h.list_teams() == [TEAM, second]


def test_members_follow_every_page(
    client: tuple[Hutch, list[httpx.Request], list[Handler]],
) -> None:
    h, seen, answer = client
    owner = {**MEMBER, "user_id": "usr_0", "role": "owner"}

    def pages(req: httpx.Request) -> httpx.Response:
        if req.url.params.get("cursor") == "c1":
            return httpx.Response(200, json={"items": [MEMBER], "next_cursor": None})
        return httpx.Response(200, json={"items": [owner], "next_cursor": "c1"})

    answer[0] = pages
    assert h.members("team_1") == [owner, MEMBER]
    assert {r.url.path for r in seen} == {"/v1/teams/team_1/members"}
    assert [Member.model_validate(m).role for m in h.members("team_1")] == [
        Role.owner,
        Role.viewer,
    ]


def test_create_and_get_team(client: tuple[Hutch, list[httpx.Request], list[Handler]]) -> None:
    h, seen, answer = client
    answer[0] = lambda req: httpx.Response(201 if req.method == "POST" else 200, json=TEAM)
    assert h.create_team("ml") == TEAM
    assert h.create_team("ml", idempotency_key="idem-1") == TEAM
    assert h.get_team("team_1") == TEAM
    create, again, get = seen
    assert (create.method, create.url.path) == ("POST", "/v1/teams")
    TeamCreate.model_validate(_body(create))  # the server's own request model accepts it
    assert _body(create) == {"name": "ml"}
    assert create.headers["Idempotency-Key"] and again.headers["Idempotency-Key"] == "idem-1"
    assert create.headers["Authorization"] == "Bearer sk_test_k"
    assert (get.method, get.url.path) == ("GET", "/v1/teams/team_1")
    Team.model_validate(h.get_team("team_1"))


def test_membership_changes(client: tuple[Hutch, list[httpx.Request], list[Handler]]) -> None:
    h, seen, answer = client

    def routes(req: httpx.Request) -> httpx.Response:
        if req.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(201 if req.method == "POST" else 200, json=MEMBER)

    answer[0] = routes
    assert h.add_member("team_1", "usr_1", "viewer") == MEMBER
    assert h.add_member("team_1", "usr_1", Role.admin, idempotency_key="idem-2") == MEMBER
    assert h.add_member("team_1", "usr_1") == MEMBER
    assert h.set_role("team_1", "usr_1", "member") == MEMBER
    h.remove_member("team_1", "usr_1")
    add, add_admin, add_default, patch, delete = seen
    assert (add.method, add.url.path) == ("POST", "/v1/teams/team_1/members")
    assert _body(add) == {"user_id": "usr_1", "role": "viewer"}
    MemberAdd.model_validate(_body(add))
    assert add.headers["Idempotency-Key"] != add_default.headers["Idempotency-Key"]
    assert add_admin.headers["Idempotency-Key"] == "idem-2"
    assert _body(add_admin) == {"user_id": "usr_1", "role": "admin"}
    assert _body(add_default) == {"user_id": "usr_1", "role": "member"}
    assert (patch.method, patch.url.path) == ("PATCH", "/v1/teams/team_1/members/usr_1")
    assert _body(patch) == {"role": "member"}
    MemberUpdate.model_validate(_body(patch))
    assert (delete.method, delete.url.path) == ("DELETE", "/v1/teams/team_1/members/usr_1")
    assert not delete.content


def test_ids_are_quoted_into_the_path(
    client: tuple[Hutch, list[httpx.Request], list[Handler]],
) -> None:
    h, seen, answer = client
    answer[0] = lambda req: httpx.Response(204)
    h.remove_member("team/../x", "usr?1")
    assert seen[0].url.raw_path == b"/v1/teams/team%2F..%2Fx/members/usr%3F1"


@pytest.mark.parametrize("call", ["add_member", "set_role"])
def test_a_bad_role_fails_before_any_request(
    client: tuple[Hutch, list[httpx.Request], list[Handler]], call: str
) -> None:
    h, seen, _ = client
    with pytest.raises(InvalidRequestError, match="role must be one of owner, admin") as e:
        getattr(h, call)("team_1", "usr_1", "boss")
    assert e.value.errors[0]["allowed"] == ["owner", "admin", "member", "viewer"]
    assert e.value.status is None and seen == []


def test_server_errors_are_typed(client: tuple[Hutch, list[httpx.Request], list[Handler]]) -> None:
    h, _, answer = client
    problem = {"title": "Not found", "status": 404, "code": "not_found", "detail": "no such team"}
    answer[0] = lambda req: httpx.Response(404, json=problem)
    with pytest.raises(NotFoundError, match="no such team"):
        h.get_team("team_x")
