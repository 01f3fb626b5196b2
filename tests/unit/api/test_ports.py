"""Port access tokens, host names and the headers the proxy passes on (no server needed)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from starlette.datastructures import Headers

from hutch.api.deps import Services
from hutch.api.port_proxy import Target, hutch_key, upstream_headers, upstream_target
from hutch.ids import new_id
from hutch.models.common import ErrorCode, HutchError
from hutch.services.clock import FakeClock
from hutch.services.permissions import Principal
from hutch.services.ports import PortTokens, host_label, parse_host, port_secret
from tests.support.rows import add_sandbox
from tests.unit.api.conftest import Who, World

SID = new_id("sbx")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def tokens(clock: FakeClock, pepper: bytes = b"pepper") -> PortTokens:
    return PortTokens(port_secret(pepper), clock)


def test_token_binds_sandbox_port_and_expiry() -> None:
    clock = FakeClock(T0)
    t, exp = tokens(clock).mint(SID, 8000, 60)
    assert exp == T0 + timedelta(seconds=60)
    assert tokens(clock).check(t, SID, 8000) == exp
    for sid, port in ((SID, 8001), (new_id("sbx"), 8000)):
        with pytest.raises(HutchError) as e:
            tokens(clock).check(t, sid, port)
        assert e.value.code is ErrorCode.token_invalid and e.value.status == 403
    with pytest.raises(HutchError) as e:  # another server's secret
        tokens(clock, b"other").check(t, SID, 8000)
    assert e.value.code is ErrorCode.token_invalid
    version, expiry, sig = t.split(".")
    for forged in (f"{version}.{int(expiry) + 3600}.{sig}", f"{version}.{expiry}.{sig[::-1]}", ""):
        with pytest.raises(HutchError) as e:
            tokens(clock).check(forged, SID, 8000)
        assert e.value.code is ErrorCode.token_invalid


def test_token_expires_by_the_injected_clock() -> None:
    clock = FakeClock(T0)
    t, _ = tokens(clock).mint(SID, 8000, 60)
    clock.advance(59)
    tokens(clock).check(t, SID, 8000)
    clock.advance(1)
    with pytest.raises(HutchError) as e:
        tokens(clock).check(t, SID, 8000)
    assert e.value.code is ErrorCode.token_expired and e.value.status == 401


def test_host_names_round_trip_and_strangers_are_left_alone() -> None:
    label = host_label(SID, 8000)
    assert "_" not in label
    assert parse_host(f"{label}.localhost:8787", "localhost") == (SID, 8000)
    assert parse_host(f"{label.upper()}.LocalHost", "localhost") == (SID, 8000)
    assert parse_host(f"8000-{SID}.sb.example.com", "sb.example.com") == (SID, 8000)
    for host in (
        "127.0.0.1:8787",
        "localhost",
        f"{label}.example.com",
        f"x.{label}.localhost",
        f"70000-{SID.replace('_', '-')}.localhost",
        f"8000-prj-{SID[4:]}.localhost",
        "[::1]:8787",
    ):
        assert parse_host(host, "localhost") is None, host


def test_upstream_headers_drop_hop_by_hop_credentials_and_spoofed_forwarding() -> None:
    key = "sk_live_" + "a" * 38
    raw = [
        (b"host", b"api:8787"),
        (b"connection", b"keep-alive, x-secret-hop"),
        (b"x-secret-hop", b"1"),
        (b"te", b"trailers"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"x-hutch-token", b"v1.1.x"),
        (b"cookie", b"a=1; hutch_port_token=v1.2.y; b=2"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-app", b"kept"),
    ]
    scope = {"type": "http", "headers": raw, "client": ("10.0.0.9", 5), "scheme": "https"}
    out = upstream_headers(scope, Headers(raw=raw), Target(SID, 8000, "/p"))
    got = {k.decode(): v.decode() for k, v in out}
    assert got == {
        "host": "api:8787",
        "cookie": "a=1; b=2",
        "x-app": "kept",
        "x-forwarded-for": "10.0.0.9",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "api:8787",
        "x-forwarded-port": "8787",
        "x-forwarded-prefix": "/p",
    }
    assert hutch_key(Headers(raw=raw)) == key
    assert hutch_key(Headers({"authorization": "Bearer app-jwt"})) is None


def test_upstream_target_strips_the_prefix_and_only_our_token() -> None:
    scope = {
        "path": f"/v1/sandboxes/{SID}/ports/8000/a b",
        "raw_path": f"/v1/sandboxes/{SID}/ports/8000/a%20b".encode(),
        "query_string": b"x=1&hutch_token=v1.2.z&y=",
    }
    target = Target(SID, 8000, f"/v1/sandboxes/{SID}/ports/8000")
    assert upstream_target(scope, target) == b"/a%20b?x=1&y="
    scope = {"path": "/", "raw_path": b"/", "query_string": b"q=hutch"}
    assert upstream_target(scope, Target(SID, 8000, "")) == b"/?q=hutch"


# --- the access decision and settings, on SQLite and PostgreSQL ---


def _actor(svc: Services, who: Who) -> Principal:
    with svc.db.session() as s:
        return svc.keys.authenticate(s, who.key)


def _code(fn: Callable[[], object]) -> ErrorCode:
    with pytest.raises(HutchError) as e:
        fn()
    return e.value.code


def test_access_decision(svc: Services, world: World) -> None:
    ports = svc.ports
    sid = add_sandbox(svc.db, world.project_id, svc.clock.now(), memory_mb=1024, disk_mb=4096)
    member, viewer, other = world.users["member"], world.users["viewer"], world.users["other"]
    assert ports.authorize(sid, 8000, member.key, []).via == "key"
    assert _code(lambda: ports.authorize(sid, 8000, None, [])) is ErrorCode.unauthenticated
    assert _code(lambda: ports.authorize(sid, 8000, viewer.key, [])) is ErrorCode.forbidden
    assert _code(lambda: ports.authorize(sid, 8000, other.key, [])) is ErrorCode.sandbox_not_found
    token, _ = ports.mint(_actor(svc, member), sid, 8000, 60)
    assert ports.authorize(sid, 8000, None, ["v1.1.x", token]).via == "token"  # any cookie
    assert _code(lambda: ports.authorize(sid, 8001, None, [token])) is ErrorCode.token_invalid
    assert _code(lambda: ports.mint(_actor(svc, other), sid, 8000, 60)) is (
        ErrorCode.sandbox_not_found
    )
    # public: per port, persisted, reversible; only writers may change it
    assert _code(lambda: ports.set_public(_actor(svc, viewer), sid, 8000, True)) is (
        ErrorCode.forbidden
    )
    assert ports.set_public(_actor(svc, member), sid, 8000, True) is True
    assert ports.authorize(sid, 8000, None, []).via == "public"
    assert ports.list_public(_actor(svc, viewer), sid) == [8000]
    assert _code(lambda: ports.authorize(sid, 8001, None, [])) is ErrorCode.unauthenticated
    ports.set_public(_actor(svc, member), sid, 8000, False)
    assert _code(lambda: ports.authorize(sid, 8000, None, [])) is ErrorCode.unauthenticated
    stopped = add_sandbox(
        svc.db, world.project_id, svc.clock.now(), state="stopped", memory_mb=1024, disk_mb=4096
    )
    assert _code(lambda: ports.authorize(stopped, 8000, member.key, [])) is (
        ErrorCode.sandbox_not_running
    )
    assert _code(lambda: ports.authorize("sbx_\x00", 8000, member.key, [])) is (
        ErrorCode.sandbox_not_found
    )


def test_a_suspended_team_serves_nothing(svc: Services, world: World) -> None:
    """Suspension stops a team's ports too: keys, tokens, public ports, new tokens and opt-ins."""
    from hutch.models.audit import SubjectType, SuspendRequest

    ports = svc.ports
    sid = add_sandbox(svc.db, world.project_id, svc.clock.now(), memory_mb=1024, disk_mb=4096)
    member = world.users["member"]
    token, _ = ports.mint(_actor(svc, member), sid, 8000, 600)
    ports.set_public(_actor(svc, member), sid, 8001, True)
    with svc.db.session() as s:
        root = svc.keys.authenticate(s, world.users["root"].key)
        svc.suspensions.suspend(
            s, root, SubjectType.team, world.team_id, SuspendRequest(reason="x")
        )
    suspended = ErrorCode.account_suspended
    assert _code(lambda: ports.authorize(sid, 8000, member.key, [])) is suspended
    assert _code(lambda: ports.authorize(sid, 8000, None, [token])) is suspended
    assert _code(lambda: ports.authorize(sid, 8001, None, [])) is suspended
    assert _code(lambda: ports.mint(_actor(svc, member), sid, 8000, 60)) is suspended
    assert _code(lambda: ports.set_public(_actor(svc, member), sid, 8002, True)) is suspended
