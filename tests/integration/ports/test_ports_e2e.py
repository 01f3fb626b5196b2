"""Exposed ports end to end: a real `hutch serve`, its runner, and a web app in a sandbox,
reached through the path route and the host route, over HTTP and WebSocket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from hutch.services.clock import FakeClock
from hutch.services.ports import PortTokens, port_secret
from tests.integration.ports.conftest import DEADLINE_S, Served, start_app
from tests.integration.sdk import server as srv

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def ws_path(
    hutch: srv.Server, path: str, headers: dict[str, str] | None = None
) -> ClientConnection:
    """A WebSocket to an API path (path route)."""
    url = hutch.url.replace("http://", "ws://") + path
    return connect(url, additional_headers=headers or {}, open_timeout=DEADLINE_S)


def ws_host(hutch: srv.Server, host: str, path: str = "/ws") -> ClientConnection:
    """A WebSocket to a host-routed name, connected to the API's loopback port (no DNS)."""
    sock = socket.create_connection(("127.0.0.1", _port_of(hutch.url)))
    return connect(f"ws://{host}:{_port_of(hutch.url)}{path}", sock=sock, open_timeout=DEADLINE_S)


def auth(c: httpx.Client) -> dict[str, str]:
    """Just the client's Authorization header (for WebSocket handshakes)."""
    return {"Authorization": str(c.headers["authorization"])}


def host_get(hutch: srv.Server, host: str, path: str, **kw: Any) -> httpx.Response:
    """GET on the API's socket with a host-routing Host header."""
    headers = {"Host": f"{host}:{_port_of(hutch.url)}", **kw.pop("headers", {})}
    return httpx.get(hutch.url + path, headers=headers, timeout=60, **kw)


def echo(ws: ClientConnection) -> None:
    ws.send("ping text")
    assert ws.recv(timeout=DEADLINE_S) == "ping text"
    blob = os.urandom(200_000)
    ws.send(blob)
    assert ws.recv(timeout=DEADLINE_S) == blob


@pytest.fixture(scope="module")
def other_key(api: httpx.Client) -> str:
    """A key of another team's project (another tenant)."""
    team = api.post("/v1/teams", json={"name": "other tenant"}).json()
    proj = api.post("/v1/projects", json={"name": "elsewhere", "team_id": team["team_id"]})
    assert proj.status_code == 201, proj.text
    r = api.post("/v1/keys", json={"name": "other", "project_id": proj.json()["project_id"]})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


@pytest.fixture(scope="module")
def viewer_key(api: httpx.Client) -> str:
    """A key of the same project that may only read sandboxes."""
    r = api.post("/v1/keys", json={"name": "reader", "scopes": ["sandboxes:read"]})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


# --- HTTP and WebSocket through both routes ---


def test_http_through_the_path_and_host_routes(served: Served, hutch: srv.Server) -> None:
    r = served.api.get(served.path + "/hello?a=1")
    assert (r.status_code, r.text) == (200, "hello from the sandbox /hello")
    r = host_get(hutch, served.host, "/hello", headers=served.api.headers)
    assert (r.status_code, r.text) == (200, "hello from the sandbox /hello")
    # the id's own spelling works as a host too
    alt = served.host.replace("-sbx-", "-sbx_")
    assert host_get(hutch, alt, "/x", headers=served.api.headers).text.endswith("/x")
    # every path of a sandbox host is the app's, even ones the API uses
    r = host_get(hutch, served.host, "/v1/me", headers=served.api.headers)
    assert r.text == "hello from the sandbox /v1/me"


def test_path_routed_apps_cannot_claim_the_api_origin(served: Served, hutch: srv.Server) -> None:
    """On the path route the app shares the API's origin: it may not widen a service worker's
    scope to it or set cookies for it, and its pages run sandboxed (an opaque origin)."""
    r = served.api.get(served.path + "/claims")
    assert r.status_code == 200
    assert "service-worker-allowed" not in r.headers and "set-cookie" not in r.headers
    assert r.headers["content-security-policy"].startswith("sandbox ")
    assert "allow-same-origin" not in r.headers["content-security-policy"]
    # On its own host it is its own origin, and keeps its headers.
    r = host_get(hutch, served.host, "/claims", headers=served.api.headers)
    assert r.headers["service-worker-allowed"] == "/" and r.headers["set-cookie"] == "app=1; Path=/"


def test_bodies_stream_both_ways(served: Served, hutch: srv.Server, tmp_path: Path) -> None:
    body = os.urandom(8 << 20)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 1 << 16):
            yield body[i : i + (1 << 16)]

    r = served.api.post(served.path + "/echo", content=chunks())  # chunked upload
    assert r.status_code == 200 and r.content == body
    # The app answers while it reads: the proxy must read and send at once (a proxy that
    # sends the whole request first deadlocks once the buffers between them are full).
    # curl reads while it sends, as browsers do (httpx sends first, so it cannot show this).
    src, dst = tmp_path / "up", tmp_path / "down"
    src.write_bytes(os.urandom(64 << 20))
    key = served.api.headers["authorization"]
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "120",
            "-H",
            f"Authorization: {key}",
            "-H",
            "Expect:",
            "--data-binary",
            f"@{src}",
            "-o",
            str(dst),
            hutch.url + served.path + "/echo",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert dst.read_bytes() == src.read_bytes()
    r = served.api.get(served.path + "/bytes", params={"n": 20 << 20})
    assert r.status_code == 200 and len(r.content) == 20 << 20


def test_headers_forwarded_and_credentials_withheld(served: Served, hutch: srv.Server) -> None:
    r = served.api.get(
        served.path + "/headers",
        headers={
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "listed in Connection: hop-by-hop",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Prefix": "/evil",
            "Cookie": "app=1; hutch_port_token=v1.1.x",
            "X-App": "kept",
        },
    )
    seen = {k.lower(): v for k, v in r.json()["headers"]}
    assert "authorization" not in seen  # the Hutch key never reaches the sandbox
    assert served_key(served) not in json.dumps(r.json())
    assert "x-hop" not in seen and seen["x-app"] == "kept"
    assert seen["cookie"] == "app=1"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-prefix"] == served.path
    assert seen["x-forwarded-host"] == urlsplit(hutch.url).netloc
    assert seen["x-forwarded-proto"] == "http"
    # An app's own bearer token and API key pass through; only Hutch keys are taken out.
    tok = served.api.post(served.path + "/token").json()["token"]
    r = httpx.get(
        hutch.url + served.path + "/headers",
        params={"hutch_token": tok, "q": "1"},
        headers={"Authorization": "Bearer app-jwt", "X-API-Key": "app-key"},
    )
    body = r.json()
    seen = {k.lower(): v for k, v in body["headers"]}
    assert seen["authorization"] == "Bearer app-jwt" and seen["x-api-key"] == "app-key"
    assert body["path"] == "/headers?q=1"  # the token is not passed on


def served_key(served: Served) -> str:
    return str(served.api.headers["authorization"]).split()[1]


def test_websocket_through_both_routes(served: Served, hutch: srv.Server) -> None:
    with ws_path(hutch, served.path + "/ws", auth(served.api)) as ws:
        echo(ws)
    r = served.api.post(served.path + "/token")
    with ws_host(hutch, served.host, f"/ws?hutch_token={r.json()['token']}") as ws:
        echo(ws)


# --- access control ---


def test_private_by_default(served: Served, hutch: srv.Server) -> None:
    r = httpx.get(hutch.url + served.path + "/")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert r.headers["content-type"] == "application/problem+json"
    r = host_get(hutch, served.host, "/")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    for open_ws in (
        lambda: ws_path(hutch, served.path + "/ws"),
        lambda: ws_host(hutch, served.host),
    ):
        with pytest.raises(InvalidStatus) as e:
            open_ws()
        assert e.value.response.status_code == 401
    # a malformed or unknown Hutch key is refused, not ignored
    r = httpx.get(hutch.url + served.path + "/", headers={"X-API-Key": "sk_live_nope"})
    assert r.status_code == 401


def test_signed_url_works_without_a_key_and_sets_a_cookie(
    served: Served, hutch: srv.Server
) -> None:
    r = served.api.post(served.path + "/token", json={"expires_in": 600})
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["path_url"].endswith(f"{served.path}/?hutch_token={t['token']}")
    assert urlsplit(t["url"]).hostname == served.host
    with httpx.Client(timeout=30) as browser:  # no key; keeps cookies like a browser
        r = browser.get(t["path_url"])
        assert (r.status_code, r.text) == (200, "hello from the sandbox /")
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and f"Path={served.path}/" in cookie
        assert "Max-Age=" in cookie and "SameSite=Lax" in cookie
        r = browser.get(hutch.url + served.path + "/again")  # the cookie alone now
        assert (r.status_code, r.text) == (200, "hello from the sandbox /again")
    r = host_get(hutch, served.host, "/h", params={"hutch_token": t["token"]})
    assert r.status_code == 200 and "Path=/;" in r.headers["set-cookie"]
    r = host_get(hutch, served.host, "/h", headers={"X-Hutch-Token": t["token"]})
    assert r.status_code == 200


def test_forged_altered_foreign_and_expired_tokens_are_refused(
    served: Served, hutch: srv.Server
) -> None:
    good = served.api.post(served.path + "/token").json()["token"]
    other_port = served.api.post(f"/v1/sandboxes/{served.sandbox_id}/ports/8001/token").json()
    sig_flipped = good[:-1] + ("A" if good[-1] != "A" else "B")
    exp_moved = good.replace(".", ".9", 1)  # a later expiry under the same signature
    for bad in (sig_flipped, exp_moved, other_port["token"], "v1.1.x", "garbage"):
        r = httpx.get(hutch.url + served.path + "/", params={"hutch_token": bad})
        assert r.status_code == 403 and r.json()["code"] == "token_invalid", (bad, r.text)
        r = host_get(hutch, served.host, "/", params={"hutch_token": bad})
        assert r.status_code == 403
    # A genuine signature made with the server's secret, but past its expiry: 401.
    assert hutch.data_dir is not None
    pepper = (Path(hutch.data_dir) / "pepper").read_bytes()
    past = PortTokens(port_secret(pepper), FakeClock(datetime.now(UTC) - timedelta(hours=2)))
    expired, _ = past.mint(served.sandbox_id, served.port, 60)
    r = httpx.get(hutch.url + served.path + "/", params={"hutch_token": expired})
    assert r.status_code == 401 and r.json()["code"] == "token_expired", r.text
    with pytest.raises(InvalidStatus) as e:
        ws_host(hutch, served.host, f"/ws?hutch_token={expired}")
    assert e.value.response.status_code == 401


def test_public_port_needs_nothing_until_made_private_again(
    served: Served, hutch: srv.Server
) -> None:
    url = f"/v1/sandboxes/{served.sandbox_id}/ports/{served.port}"
    r = served.api.put(url, json={"public": True})
    assert r.status_code == 200 and r.json()["public"] is True
    try:
        assert served.api.get(url).json()["public"] is True
        r = httpx.get(hutch.url + served.path + "/pub")
        assert (r.status_code, r.text) == (200, "hello from the sandbox /pub")
        assert host_get(hutch, served.host, "/pub").status_code == 200
        with ws_host(hutch, served.host) as ws:
            echo(ws)
        # public means this port only
        r = httpx.get(hutch.url + f"/v1/sandboxes/{served.sandbox_id}/ports/8001/")
        assert r.status_code == 401
    finally:
        assert served.api.put(url, json={"public": False}).json()["public"] is False
    assert httpx.get(hutch.url + served.path + "/pub").status_code == 401


def test_other_tenants_get_404_and_readers_403(
    served: Served, hutch: srv.Server, other_key: str, viewer_key: str
) -> None:
    h = {"Authorization": f"Bearer {other_key}"}
    r = httpx.get(hutch.url + served.path + "/", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "sandbox_not_found"
    assert host_get(hutch, served.host, "/", headers=h).status_code == 404
    settings = f"/v1/sandboxes/{served.sandbox_id}/ports/{served.port}"
    assert httpx.put(hutch.url + settings, json={"public": True}, headers=h).status_code == 404
    assert httpx.post(hutch.url + settings + "/token", headers=h).status_code == 404
    with pytest.raises(InvalidStatus) as e:
        ws_path(hutch, served.path + "/ws", h)
    assert e.value.response.status_code == 404
    v = {"Authorization": f"Bearer {viewer_key}"}
    r = httpx.get(hutch.url + served.path + "/", headers=v)
    assert r.status_code == 403 and "ports:access" in r.json()["detail"]
    assert httpx.post(hutch.url + settings + "/token", headers=v).status_code == 403
    assert httpx.put(hutch.url + settings, json={"public": True}, headers=v).status_code == 403


def test_nothing_listening_is_a_502_problem(served: Served, hutch: srv.Server) -> None:
    r = served.api.get(f"/v1/sandboxes/{served.sandbox_id}/ports/8002/")
    assert r.status_code == 502
    assert r.json()["code"] == "port_unreachable" and "port 8002" in r.json()["detail"]
    with pytest.raises(InvalidStatus) as e:
        ws_path(hutch, f"/v1/sandboxes/{served.sandbox_id}/ports/8002/", auth(served.api))
    assert e.value.response.status_code == 502
    r = served.api.get(f"/v1/sandboxes/{served.sandbox_id}/ports/70000/")
    assert r.status_code == 422
    for bad in ("sbx_%00", "nope", "prj_" + served.sandbox_id[4:]):
        r = httpx.get(f"{hutch.url}/v1/sandboxes/{bad}/ports/8000/")
        assert r.status_code == 404 and r.json()["code"] == "sandbox_not_found", r.text


def test_sandbox_still_has_no_network(served: Served, hutch: srv.Server) -> None:
    r = served.api.post(
        f"/v1/sandboxes/{served.sandbox_id}/exec",
        json={"cmd": "cat /proc/net/dev; echo ---; cat /proc/net/route"},
    )
    dev, route = r.json()["stdout"].split("---\n")
    assert [ln.split(":")[0].strip() for ln in dev.splitlines() if ":" in ln] == ["lo"]
    assert len(route.strip().splitlines()) == 1  # the header: no route anywhere
    # No way out: a documentation address (192.0.2.1, never routed) fails in the kernel
    # before any packet is sent, and the API's own port on the host's loopback is not the
    # sandbox's loopback.
    probe = (
        "import errno, socket, sys\n"
        "for addr in [('192.0.2.1', 80), ('127.0.0.1', int(sys.argv[1]))]:\n"
        "    s = socket.socket(); s.settimeout(5)\n"
        "    print(errno.errorcode.get(s.connect_ex(addr), 'connected'))\n"
    )
    r = served.api.post(
        f"/v1/sandboxes/{served.sandbox_id}/exec",
        json={"cmd": ["python3", "-c", probe, str(_port_of(hutch.url))]},
    )
    assert r.json()["stdout"].split() == ["ENETUNREACH", "ECONNREFUSED"], r.text


# --- life cycle and leaks ---


def _fds_and_threads(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def _pids(hutch: srv.Server) -> tuple[int, int]:
    """(API server pid, runner pid) of the server under test."""
    api_pid = runner_pid = 0
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(hutch.data_dir).encode() in cmd:
            if b"hutch.runner" in cmd:
                runner_pid = int(p)
            elif b"serve" in cmd:
                api_pid = int(p)
    assert api_pid and runner_pid
    return api_pid, runner_pid


def test_tunnels_close_with_the_sandbox_and_nothing_is_left(
    api: httpx.Client, hutch: srv.Server
) -> None:
    sid = api.post("/v1/sandboxes", json={"timeout_s": 300}).json()["sandbox_id"]
    start_app(api, sid, 8000)
    sb = Served(sid, 8000, api)
    pids = _pids(hutch)
    before = [_fds_and_threads(p) for p in pids]
    for _ in range(20):
        assert api.get(sb.path + "/").status_code == 200
        with ws_path(hutch, sb.path + "/ws", auth(api)) as ws:
            echo(ws)
    with ws_path(hutch, sb.path + "/ws", auth(api)) as open_ws:
        echo(open_ws)
        assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
        with pytest.raises(ConnectionClosed):
            open_ws.recv(timeout=DEADLINE_S)  # ended by the kill, not by the client
    r = api.get(sb.path + "/")
    assert r.status_code in (404, 409), r.text
    # fds and threads come back to where they were (pooled connections expire or break)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        now = [_fds_and_threads(p) for p in pids]
        ok = all(n[0] <= b[0] and n[1] <= b[1] + 4 for n, b in zip(now, before, strict=True))
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ok, (before, now)
