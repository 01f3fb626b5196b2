"""Cursor pagination: stable order, no duplicates or gaps even while items are added."""

from __future__ import annotations

import pytest

from hutch.services.pagination import decode_cursor, encode_cursor
from tests.unit.api.conftest import Client, World


def _make(client: Client, world: World, n: int, **meta: str) -> list[str]:
    return [
        client.post("/v1/sandboxes", headers=world.owner.h, json={"metadata": meta}).json()[
            "sandbox_id"
        ]
        for _ in range(n)
    ]


def _walk(client: Client, world: World, url: str, on_page=None) -> list[str]:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(url, headers=world.owner.h, params=params).json()
        seen += [s["sandbox_id"] for s in page["items"]]
        if on_page:
            on_page()
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_pages_cover_everything_once_newest_first(client: Client, world: World) -> None:
    ids = _make(client, world, 8)
    seen = _walk(client, world, "/v1/sandboxes")
    assert seen == sorted(ids, reverse=True)


def test_inserts_during_paging_cause_no_dupes_or_skips(client: Client, world: World) -> None:
    before = _make(client, world, 7)
    added: list[str] = []
    seen = _walk(
        client, world, "/v1/sandboxes", on_page=lambda: added.extend(_make(client, world, 2))
    )
    assert len(seen) == len(set(seen)), "no duplicates"
    assert set(before) <= set(seen), "nothing that existed when paging began is skipped"
    assert not set(added) & set(seen), "items created later sort before the cursor"


def test_filters_by_state_and_metadata(client: Client, world: World) -> None:
    a = _make(client, world, 2, team="red", env="ci")
    b = _make(client, world, 2, team="blue", env="ci")
    client.delete(f"/v1/sandboxes/{a[0]}", headers=world.owner.h)

    def ids(**params: str) -> set[str]:
        r = client.get("/v1/sandboxes", headers=world.owner.h, params=params)
        assert r.status_code == 200, r.text
        return {s["sandbox_id"] for s in r.json()["items"]}

    assert ids(**{"metadata.team": "red"}) == set(a)
    assert ids(**{"metadata.env": "ci", "metadata.team": "blue"}) == set(b)
    assert ids(**{"metadata.env": "ci", "state": "running"}) == {a[1], *b}
    assert ids(state="stopped") == {a[0]}
    assert ids(**{"metadata.team": "green"}) == set()
    r = client.get("/v1/sandboxes", headers=world.owner.h, params={"metadata.bad key": "x"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request")


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_limit_bounds(client: Client, world: World, limit: int) -> None:
    r = client.get("/v1/sandboxes", headers=world.owner.h, params={"limit": limit})
    assert r.status_code == 422
    err = r.json()["errors"][0]
    assert err["field"] == "limit" and err["allowed"] in ({"ge": 1}, {"le": 100})


@pytest.mark.parametrize("cursor", ["garbage", encode_cursor("sbx_x")[:-2], "djE6"])
def test_bad_cursor_is_422(client: Client, world: World, cursor: str) -> None:
    r = client.get("/v1/sandboxes", headers=world.owner.h, params={"cursor": cursor})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request")


def test_cursor_round_trip() -> None:
    assert (
        decode_cursor(encode_cursor("sbx_01hzzzzzzzzzzzzzzzzzzzzzzz"))
        == "sbx_01hzzzzzzzzzzzzzzzzzzzzzzz"
    )


def test_other_lists_paginate_too(client: Client, world: World) -> None:
    for i in range(4):
        client.post("/v1/projects", headers=world.owner.h, json={"name": f"p{i}"})
    page = client.get("/v1/projects", headers=world.owner.h, params={"limit": 2}).json()
    nxt = client.get(
        "/v1/projects", headers=world.owner.h, params={"limit": 2, "cursor": page["next_cursor"]}
    ).json()
    names = [p["name"] for p in page["items"] + nxt["items"]]
    assert names == ["p3", "p2", "p1", "p0"]
