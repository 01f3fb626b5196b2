"""`hutch usage` and `hutch billing` against a real server with a real runner."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.cli.test_cli_e2e import hutch
from tests.integration.sdk.server import Server

pytestmark = pytest.mark.slow


def test_usage_shows_a_killed_sandbox_with_its_cost(api: Server) -> None:
    r = hutch("sandbox", "create", "--timeout", "300", "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["sandbox_id"]
    assert hutch("sandbox", "kill", sid).returncode == 0  # the final heartbeat bills it
    deadline = time.monotonic() + 60
    while True:
        r = hutch("usage", "--by", "sandbox", "--json")
        assert r.returncode == 0, r.stderr
        items = {i["sandbox_id"]: i for i in json.loads(r.stdout)["usage"]["items"]}
        if sid in items or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert float(items[sid]["seconds"]) > 0 and items[sid]["cost_micros"] >= 0
    table = hutch("usage", "--by", "sandbox")
    assert table.returncode == 0 and sid in table.stdout and "total" in table.stdout
    assert "█" in table.stdout or "·" in table.stdout  # the chart
    csv = hutch("usage", "--csv")
    assert csv.stdout.startswith("record_id,meter,") and sid in csv.stdout
    summary = json.loads(hutch("billing", "summary", "--json").stdout)
    assert summary["balance_micros"] <= 50_000_000
    credits = json.loads(hutch("billing", "credits", "--json").stdout)
    assert [g["kind"] for g in credits] == ["promotional"]
    assert hutch("usage", "--by", "week").returncode == 2
    team_id = json.loads(hutch("me", "--json").stdout)["project"]["team_id"]
    r = hutch("billing", "grant", team_id, "2.5", "--kind", "paid", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["amount_micros"] == 2_500_000
    r = hutch("billing", "grant", team_id, "0")
    assert r.returncode == 1 and "amount" in r.stderr
