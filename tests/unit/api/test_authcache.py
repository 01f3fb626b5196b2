"""The authentication cache: fast, but never later than promised to notice a change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from hutch.api.deps import Services
from hutch.db.models import ApiKeyRow, UserRow
from hutch.models.api import Mode, Role, Scope
from hutch.services.authcache import PrincipalCache
from hutch.services.clock import FakeClock
from hutch.services.permissions import Principal
from tests.unit.api.conftest import AppFactory, Client, World, build_world

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _principal() -> Principal:
    return Principal(
        key_id="key_1",
        user_id="usr_1",
        is_admin=False,
        project_id="prj_1",
        team_id="team_1",
        mode=Mode.live,
        role=Role.owner,
        scopes=frozenset(Scope),
    )


def test_entries_expire_after_the_ttl_and_at_the_keys_own_expiry() -> None:
    clock = FakeClock(NOW)
    cache = PrincipalCache(1.0, clock)
    p = _principal()
    cache.put("h", p, NOW + timedelta(hours=1), cache.generation)
    assert cache.get("h") is p
    clock.advance(0.99)
    assert cache.get("h") is p
    clock.advance(0.02)
    assert cache.get("h") is None, "stale after ttl_s"
    cache.put("h", p, clock.now() + timedelta(seconds=5), cache.generation)
    clock.advance(5)
    assert cache.get("h") is None, "a rotated key's grace ends on time"


def test_a_lookup_that_raced_a_change_is_not_cached() -> None:
    cache = PrincipalCache(60.0, FakeClock(NOW))
    generation = cache.generation  # a request starts asking the database
    cache.clear()  # meanwhile a commit changes keys
    cache.put("h", _principal(), None, generation)
    assert cache.get("h") is None
    disabled = PrincipalCache(0, FakeClock(NOW))
    disabled.put("h", _principal(), None, disabled.generation)
    assert disabled.get("h") is None


def test_every_cache_on_one_database_is_cleared_by_a_commit(svc: Services) -> None:
    # Several caches may watch one session factory (apps sharing a Database); one commit that
    # writes an auth table must clear each of them, not just the first to notice.
    caches = [PrincipalCache(60.0, svc.clock) for _ in range(3)]
    for cache in caches:
        cache.watch(svc.db.sessions)
        cache.put("h", _principal(), None, cache.generation)
    with svc.db.session() as s:
        s.execute(update(UserRow).values(name="renamed"))
        s.commit()
    assert [cache.get("h") for cache in caches] == [None, None, None]


def test_changes_through_this_process_apply_to_the_next_request(
    client: Client, world: World, svc: Services
) -> None:
    h = world.member.h
    assert client.get("/v1/sandboxes", headers=h).status_code == 200  # now cached
    with svc.db.session() as s:  # an ORM write, as every service makes them
        user = s.get(UserRow, world.member.user_id)
        assert user is not None
        user.disabled_at = svc.clock.now()
        s.commit()
    r = client.get("/v1/sandboxes", headers=h)
    assert (r.status_code, r.json()["code"]) == (403, "account_restricted"), r.text
    r = client.delete(f"/v1/keys/{world.owner.key_id}", headers=world.owner.h)
    assert r.status_code == 204
    r = client.get("/v1/sandboxes", headers=world.owner.h)
    assert (r.status_code, r.json()["code"]) == (401, "key_revoked")


def test_changes_by_another_process_apply_within_the_ttl(make_app: AppFactory) -> None:
    cached, uncached = make_app(), make_app(auth_cache_s=0)
    svc: Services = cached.state.services
    world = build_world(svc)
    clients = [Client(cached), Client(uncached)]
    try:
        for c in clients:
            assert c.get("/v1/sandboxes", headers=world.owner.h).status_code == 200
        # Another API process revokes the key: this process's sessions never see the write.
        with svc.db.engine.begin() as conn:
            conn.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == world.owner.key_id)
                .values(revoked_at=svc.clock.now())
            )
        r = clients[1].get("/v1/sandboxes", headers=world.owner.h)
        assert (r.status_code, r.json()["code"]) == (401, "key_revoked")
        assert clients[0].get("/v1/sandboxes", headers=world.owner.h).status_code == 200
        svc.clock.advance(svc.settings.auth_cache_s)  # type: ignore[attr-defined]
        r = clients[0].get("/v1/sandboxes", headers=world.owner.h)
        assert (r.status_code, r.json()["code"]) == (401, "key_revoked")
    finally:
        for c in clients:
            c.close()
