"""The exec audit trail through a real `hutch serve` and its real runner: it holds the command
name and exit code, and a marker passed in argv, env, stdin, stdout and a file appears in none
of the database, the server and runner output, or the audit export. Needs root."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from hutch.db.base import Base
from hutch.db.session import Database
from tests.integration.api.conftest import Server, start_server

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runner needs root"),
]


@pytest.fixture
def full_server(database: Database, tmp_path: Path):  # type: ignore[no-untyped-def]
    s = start_server(database, tmp_path, ready_timeout=900)
    yield s
    if s.proc.poll() is None:
        s.stop()


def database_text(database: Database) -> str:
    """Every row of every table, as text; for SQLite also the raw file bytes (and WAL)."""
    parts = []
    with database.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            parts.extend(repr(tuple(row)) for row in conn.execute(select(table)))
    if database.dialect == "sqlite":
        path = Path(str(make_url(database.url).database))
        for f in (path, path.with_name(path.name + "-wal")):
            if f.exists():
                parts.append(f.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_exec_audit_holds_metadata_only(full_server: Server, database: Database) -> None:
    from websockets.sync.client import connect

    marker = "MARKER" + secrets.token_hex(8)
    h = full_server.admin_headers()
    with httpx.Client(base_url=full_server.url, headers=h, timeout=120) as c:
        project = c.get("/v1/me").json()["project"]["project_id"]
        r = c.patch(f"/v1/projects/{project}", json={"audit_exec": True})
        assert r.status_code == 200 and r.json()["audit_exec"] is True
        sbx = c.post("/v1/sandboxes", json={}).json()["sandbox_id"]
        url = f"/v1/sandboxes/{sbx}"
        up = c.put(f"{url}/files", params={"path": "/home/user/in.txt"}, content=marker.encode())
        assert up.status_code == 200
        script = f'cat; printf "$M"; cat /home/user/in.txt > "/home/user/{marker}.out"; exit 7'
        r = c.post(
            f"{url}/exec",
            json={"cmd": ["/bin/sh", "-c", script, marker], "env": {"M": marker}, "stdin": marker},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["exit_code"], r.json()["stdout"]) == (7, marker * 2)
        r = c.post(f"{url}/exec", json={"cmd": f"echo {marker}"})
        assert r.json()["stdout"] == marker + "\n"
        bg = c.post(
            f"{url}/exec", json={"cmd": ["sh", "-c", f": {marker}; exit 3"], "background": True}
        )
        assert bg.status_code == 201
        waited = c.post(f"{url}/processes/{bg.json()['pid']}/wait")
        assert waited.json()["exit_code"] == 3
        ws_url = full_server.url.replace("http", "ws") + f"{url}/exec/stream"
        with connect(ws_url, additional_headers=h) as ws:
            start = {"cmd": ["/usr/bin/cat", "-"], "env": {"X": marker}}
            ws.send(json.dumps({"type": "start", "request": start}))
            assert json.loads(ws.recv())["type"] == "started"
            ws.send(b"\x00" + marker.encode())
            assert ws.recv() == b"\x01" + marker.encode()
            ws.send(json.dumps({"type": "close_stdin"}))
            assert json.loads(ws.recv())["exit_code"] == 0

        items = c.get("/v1/audit/execs", params={"sandbox_id": sbx}).json()["items"]
        got = sorted((i["kind"], i["command"], i["exit_code"]) for i in items)
        assert got == [
            ("background", "sh", 3),
            ("exec", "bash", 0),
            ("exec", "sh", 7),
            ("stream", "cat", 0),
        ]
        assert all(i["ended_at"] and i["started_at"] <= i["ended_at"] for i in items)
        jsonl = c.get("/v1/audit/execs/export", params={"format": "jsonl"})
        csv = c.get("/v1/audit/execs/export", params={"format": "csv", "command": "cat"})
        assert jsonl.headers["content-type"].startswith("application/x-ndjson")
        assert len(jsonl.text.splitlines()) == 4 and len(csv.text.splitlines()) == 2
        assert csv.text.splitlines()[0].startswith("id,project_id,sandbox_id,command")
        # The file really holds the marker (so its absence elsewhere means something).
        r = c.get(f"{url}/files", params={"path": f"/home/user/{marker}.out"})
        assert r.content == marker.encode()
        assert c.delete(url).status_code == 204
    assert full_server.stop() == 0
    assert marker not in jsonl.text and marker not in csv.text
    assert marker not in full_server.output(), "server and runner output"
    assert marker not in database_text(database)
