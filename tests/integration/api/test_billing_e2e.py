"""Billing end to end: a real runner and a real `hutch serve`, both killed with SIGKILL while a
sandbox runs. The seconds billed stay within one heartbeat of the sandbox's real life and are
never counted twice. Needs root (the runner creates real namespaces).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from hutch.db.session import Database
from tests.integration.api.conftest import Server, start_server
from tests.integration.runner.conftest import RunnerProc, base_template, start_runner

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the runner needs root"),
]
__all__ = ["base_template"]  # a fixture this module uses
HEARTBEAT_S = 0.5
# a window of the real sandbox life that the runner is down (and then the server): the sandbox
# keeps running; nothing reports it until they are back
OUTAGE_S = 2.0


def billed(c: httpx.Client, sandbox_id: str) -> Decimal:
    items = c.get("/v1/billing/usage", params={"group_by": "sandbox"}).json()["items"]
    return sum((Decimal(i["seconds"]) for i in items if i["sandbox_id"] == sandbox_id), Decimal(0))


def wait_billed_beyond(c: httpx.Client, sandbox_id: str, seconds: Decimal) -> Decimal:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = billed(c, sandbox_id)
        if got > seconds:
            return got
        time.sleep(0.1)
    raise AssertionError(f"billing did not pass {seconds} s (at {billed(c, sandbox_id)})")


@pytest.fixture
def env(
    base_template: None, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, list[RunnerProc], list[Server]]]:
    monkeypatch.setenv("HUTCH_RUNNER_HEARTBEAT_S", str(HEARTBEAT_S))
    runners = [start_runner(tmp_path / "data")]
    servers: list[Server] = []
    yield tmp_path, runners, servers
    for s in servers:
        if s.proc.poll() is None:
            s.stop()
    transport = httpx.HTTPTransport(uds=str(tmp_path / "data" / "runner.sock"))
    with httpx.Client(transport=transport, base_url="http://runner", timeout=30) as c:
        for sb in c.get("/v1/sandboxes").json():
            c.delete(f"/v1/sandboxes/{sb['sandbox_id']}")
    runners[-1].stop()


def test_kill_9_of_runner_and_server_bills_the_truth_once(
    env: tuple[Path, list[RunnerProc], list[Server]], database: Database
) -> None:
    tmp_path, runners, servers = env
    servers.append(start_server(database, tmp_path, "--no-runner"))
    h = servers[0].admin_headers()
    with httpx.Client(base_url=servers[0].url, headers=h, timeout=120) as c:
        r = c.post("/v1/sandboxes", json={"timeout_s": 600})
        assert r.status_code == 201, r.text
        sid = r.json()["sandbox_id"]
        created = datetime.fromisoformat(r.json()["created_at"])
        before = wait_billed_beyond(c, sid, Decimal(1))

    runners[0].stop(signal.SIGKILL)
    time.sleep(OUTAGE_S)  # a real outage of known length, not a wait for state
    runners.append(start_runner(tmp_path / "data"))  # adopts the sandbox, reports again
    with httpx.Client(base_url=servers[0].url, headers=h, timeout=120) as c:
        after_runner = wait_billed_beyond(c, sid, before + Decimal(OUTAGE_S))

    servers[0].proc.send_signal(signal.SIGKILL)
    servers[0].proc.wait(timeout=15)
    time.sleep(OUTAGE_S)  # heartbeats sent now reach nobody
    servers.append(start_server(database, tmp_path, "--no-runner"))  # same data dir and key
    with httpx.Client(base_url=servers[1].url, headers=h, timeout=120) as c:
        wait_billed_beyond(c, sid, after_runner + Decimal(OUTAGE_S))
        assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204
        ended = datetime.fromisoformat(c.get(f"/v1/sandboxes/{sid}").json()["ended_at"])
        truth = Decimal(str((ended - created).total_seconds()))
        deadline = time.monotonic() + 30
        total = billed(c, sid)
        while truth - total > Decimal(HEARTBEAT_S) and time.monotonic() < deadline:
            time.sleep(0.1)  # the final heartbeat is on its way
            total = billed(c, sid)
        assert truth - Decimal(HEARTBEAT_S) <= total <= truth, (total, truth)
        spans = sorted(
            (r["start"], r["end"])
            for r in csv.DictReader(io.StringIO(c.get("/v1/billing/usage.csv").text))
            if r["sandbox_id"] == sid
        )
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end == start  # contiguous, never overlapping: nothing counted twice
