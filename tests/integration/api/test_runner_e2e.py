"""End to end through a real runner: `hutch serve` starts it, sandboxes run real commands.

Needs root (the runner creates real namespaces).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.integration.api.conftest import Server, start_server

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runner needs root"),
]


@pytest.fixture
def full_server(database, tmp_path: Path):  # type: ignore[no-untyped-def]
    """`hutch serve` with its own runner (the base template may take a while the first time)."""
    s = start_server(database, tmp_path, ready_timeout=900)
    yield s
    if s.proc.poll() is None:
        # Sandboxes outlive their runner by design (a restarted one adopts them): kill what the
        # test left running, or it stays on the host with nothing to time it out.
        with httpx.Client(base_url=s.url, headers=s.admin_headers(), timeout=120) as c:
            running = c.get("/v1/sandboxes", params={"state": "running"}).json()["items"]
            for sbx in running:
                c.delete(f"/v1/sandboxes/{sbx['sandbox_id']}")
        s.stop()


def test_sandbox_life_cycle_through_the_real_runner(full_server: Server) -> None:
    h = full_server.admin_headers()
    with httpx.Client(base_url=full_server.url, headers=h, timeout=120) as c:
        r = c.post("/v1/sandboxes", json={"metadata": {"suite": "e2e"}, "timeout_s": 300})
        assert r.status_code == 201, r.text
        sbx = r.json()
        assert sbx["state"] == "running"
        url = f"/v1/sandboxes/{sbx['sandbox_id']}"
        r = c.post(f"{url}/exec", json={"cmd": ["echo", "hello"]})
        assert r.status_code == 200 and r.json()["stdout"] == "hello\n"
        data = os.urandom(1 << 20)
        assert (
            c.put(f"{url}/files", params={"path": "/home/user/blob"}, content=data).status_code
            == 200
        )
        assert c.get(f"{url}/files", params={"path": "/home/user/blob"}).content == data
        assert c.get(f"{url}/stats").json()["sandbox_id"] == sbx["sandbox_id"]
        assert c.delete(url).status_code == 204
        assert c.get(url).json()["state"] == "stopped"
        assert c.get("/v1/sandboxes", params={"state": "running"}).json()["items"] == []
    assert full_server.stop() == 0
    assert "stopping the runner" in full_server.output()


def test_exec_stream_through_the_real_runner(full_server: Server) -> None:
    from websockets.sync.client import connect

    h = full_server.admin_headers()
    sbx = httpx.post(f"{full_server.url}/v1/sandboxes", headers=h, json={}, timeout=120).json()
    ws_url = (
        full_server.url.replace("http", "ws") + f"/v1/sandboxes/{sbx['sandbox_id']}/exec/stream"
    )
    with connect(ws_url, additional_headers=h) as ws:
        ws.send(json.dumps({"type": "start", "request": {"cmd": ["cat"]}}))
        assert json.loads(ws.recv())["type"] == "started"
        ws.send(b"\x00ping\n")
        assert ws.recv() == b"\x01ping\n"
        ws.send(json.dumps({"type": "close_stdin"}))
        assert json.loads(ws.recv())["type"] == "exit"
    r = httpx.delete(f"{full_server.url}/v1/sandboxes/{sbx['sandbox_id']}", headers=h, timeout=60)
    assert r.status_code == 204


def test_a_secret_reaches_the_sandbox_env_and_nothing_else(full_server: Server, database) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.api.test_secrets import everything_stored

    marker = "E2EMARKER" + os.urandom(8).hex()
    h = full_server.admin_headers()
    with httpx.Client(base_url=full_server.url, headers=h, timeout=120) as c:
        project = c.get("/v1/me").json()["project"]["project_id"]
        r = c.put(f"/v1/projects/{project}/secrets/E2E_SECRET", json={"value": marker})
        assert r.status_code == 201, r.text
        r = c.post(
            "/v1/sandboxes",
            headers={"Idempotency-Key": "e2e-secret"},
            json={"secrets": {"INJECTED": "E2E_SECRET"}, "env": {"PLAIN": "p"}},
        )
        assert r.status_code == 201, r.text
        assert marker not in r.text
        url = f"/v1/sandboxes/{r.json()['sandbox_id']}"
        out = c.post(f"{url}/exec", json={"cmd": ["printenv", "INJECTED", "PLAIN"]}).json()
        assert out["stdout"] == f"{marker}\np\n"
        assert c.delete(url).status_code == 204
    assert full_server.stop() == 0
    assert "secret_written" in full_server.output()  # the log is there, and...
    assert marker not in full_server.output()  # ...holds no value
    assert marker.encode() not in everything_stored(database)
    assert marker.encode() not in (full_server.data_dir / "kek.json").read_bytes()
