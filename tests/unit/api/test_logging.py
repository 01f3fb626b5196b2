"""Logs never contain bodies, command arguments, file contents, env values, paths or keys."""

from __future__ import annotations

import json
import secrets

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.conftest import Client, World


def test_no_content_in_logs(
    client: Client, ws_client: TestClient, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    m = "MARKER" + secrets.token_hex(8)
    capsys.readouterr()
    h = world.owner.h
    sbx = client.post(
        "/v1/sandboxes",
        headers={**h, "Idempotency-Key": m},
        json={"env": {"SECRET": m}, "metadata": {"note": m}},
    ).json()["sandbox_id"]
    url = f"/v1/sandboxes/{sbx}"
    client.post(f"{url}/exec", headers=h, json={"cmd": ["echo", m], "env": {"X": m}, "stdin": m})
    client.put(f"{url}/files", headers=h, params={"path": f"/home/user/{m}"}, content=m.encode())
    client.get(f"{url}/files", headers=h, params={"path": f"/home/user/{m}"})
    client.get(f"{url}/files", headers=h, params={"path": f"/nope/{m}"})  # an error, too
    client.post("/v1/projects", headers=h, json={"name": m})
    client.post("/v1/projects", headers=h, json={"name": m, "bogus": m})  # validation error
    created = client.post("/v1/keys", headers=h, json={"name": m}).json()["key"]
    client.get("/v1/me", headers={"Authorization": f"Bearer {created}"})
    client.get("/v1/me", headers={"Authorization": f"Bearer sk_live_{m}"})  # bad key
    client.get(f"/v1/{m}", headers=h)  # unknown route
    with ws_client.websocket_connect(f"{url}/exec/stream", headers=h) as ws:
        ws.send_text(json.dumps({"type": "start", "request": {"cmd": ["echo", m]}}))
        ws.receive_json()
        ws.send_bytes(b"\x00" + m.encode())
        ws.receive_bytes()
    out = capsys.readouterr()
    logs = out.out + out.err
    lines = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    assert len([line for line in lines if line.get("event") == "request"]) >= 12, "logging works"
    assert m not in logs
    for key in (world.owner.key, created):
        assert key not in logs and key[8:-6] not in logs
    assert {line["route"] for line in lines if "route" in line} >= {
        "/v1/sandboxes/{sandbox_id}/files",
        "/v1/sandboxes/{sandbox_id}/exec",
        "<unmatched>",
    }
