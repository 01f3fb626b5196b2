"""A real `hutch serve` process, talked to over HTTP on loopback."""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from hutch.cli.serve import RunnerStartError, start_runner, stop_process
from hutch.ids import new_id
from hutch.services.keys import is_well_formed
from tests.integration.api.conftest import Server
from tests.support.server import start_server as start_real_server


def test_serve_bootstraps_and_answers_over_http(server: Server) -> None:
    key_file = server.data_dir / "admin-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((server.data_dir / "pepper").stat().st_mode) == 0o600
    assert is_well_formed(key_file.read_text().strip())
    assert str(key_file) in server.output(), "serve says where the key is"
    h = server.admin_headers()
    marker = "MARKER" + secrets.token_hex(8)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        me = c.get("/v1/me", headers=h)
        assert me.status_code == 200 and me.json()["role"] == "owner"
        assert me.json()["user"]["is_admin"] is True
        assert c.get("/v1/me").json()["code"] == "unauthenticated"
        idem = {**h, "Idempotency-Key": marker}
        first = c.post("/v1/projects", headers=idem, json={"name": marker})
        again = c.post("/v1/projects", headers=idem, json={"name": marker})
        assert first.status_code == again.status_code == 201 and first.content == again.content
        r = c.post("/v1/sandboxes", headers=h, json={"env": {"K": marker}})
        assert (r.status_code, r.json()["code"]) == (503, "runner_unavailable")
        r = c.get(f"/v1/{marker}", headers=h)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert "hutch_http_requests_total" in c.get("/metrics").text
        assert c.get("/openapi.json").json()["info"]["title"] == "Hutch API"
        assert c.get("/docs").status_code == 200
    assert server.stop() == 0, server.output()
    out = server.output()
    assert '"event": "request"' in out, "the server logs requests"
    assert marker not in out, "no bodies, paths, headers or env values in the server's output"
    assert key_file.read_text().strip() not in out


def test_second_start_keeps_the_admin_and_the_pepper(
    server: Server, database, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.api.conftest import start_server

    h = server.admin_headers()
    pepper = (server.data_dir / "pepper").read_bytes()
    assert server.stop() == 0
    again = start_server(database, tmp_path, "--no-runner")  # same data dir and database
    try:
        assert (again.data_dir / "pepper").read_bytes() == pepper
        assert httpx.get(f"{again.url}/v1/me", headers=h, timeout=10).status_code == 200
    finally:
        again.stop()


def test_serve_refuses_a_runner_that_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(RunnerStartError, match="exited with status 3"):
        start_runner(
            [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "r.sock", timeout_s=30
        )
    with pytest.raises(RunnerStartError, match="could not start"):
        start_runner([str(tmp_path / "missing")], tmp_path / "r.sock")
    with pytest.raises(RunnerStartError, match="did not answer"):
        start_runner(
            [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "r.sock", timeout_s=1
        )


FAKE_HEALTH = textwrap.dedent("""
    import http.server, os, socketserver, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/v1/health"
            self.send_response(200 if ok else 404)
            self.end_headers()
        def address_string(self):
            return "runner"
    path = sys.argv[1]
    with socketserver.UnixStreamServer(path, H) as s:
        s.serve_forever()
""")


def test_serve_waits_for_the_runner_health_check(tmp_path: Path) -> None:
    sock = tmp_path / "runner.sock"
    proc = start_runner([sys.executable, "-c", FAKE_HEALTH, str(sock)], sock, timeout_s=30)
    try:
        assert proc.poll() is None and sock.exists()
    finally:
        assert stop_process(proc, grace_s=5) != 0 or True
    assert proc.poll() is not None


def test_port_in_use_is_an_error(server: Server, database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    port = server.url.rsplit(":", 1)[1]
    env = {**os.environ, "HUTCH_DATABASE_URL": database.url}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hutch.cli.main",
            "serve",
            "--no-runner",
            "--data-dir",
            str(tmp_path / "d2"),
            "--port",
            port,
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert r.returncode != 0


def test_exec_stream_refusal_over_a_real_websocket(server: Server) -> None:
    from websockets.sync.client import connect

    ws_url = server.url.replace("http://", "ws://") + f"/v1/sandboxes/{new_id('sbx')}/exec/stream"
    with connect(ws_url, additional_headers=server.admin_headers()) as ws:
        frame = json.loads(ws.recv())
        assert (frame["type"], frame["code"]) == ("error", "sandbox_not_found")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    with connect(ws_url) as ws:
        assert json.loads(ws.recv())["code"] == "unauthenticated"


@pytest.mark.root
def test_log_level_from_the_environment_reaches_the_api_and_the_runner(
    server: Server, tmp_path: Path
) -> None:
    """HUTCH_LOG_LEVEL=warning silences the per-request and per-sandbox info lines of both
    processes (which a server at the default level writes)."""
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/v1/me", headers=server.admin_headers()).status_code == 200
    assert '"event": "request"' in server.output()
    quiet = start_real_server(tmp_path / "quiet", env={"HUTCH_LOG_LEVEL": "warning"})
    try:
        with httpx.Client(base_url=quiet.url, timeout=60) as c:
            h = quiet.admin_headers()
            made = c.post("/v1/sandboxes", headers=h, json={"timeout_s": 60})
            assert made.status_code == 201, made.text
            gone = c.delete(f"/v1/sandboxes/{made.json()['sandbox_id']}", headers=h)
            assert gone.status_code == 204
    finally:
        quiet.stop()
    out = quiet.output()
    assert '"event": "request"' not in out and "sandbox_created" not in out, out[-2000:]
    assert '"level": "info"' not in out, out[-2000:]
