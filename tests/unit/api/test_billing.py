"""Billing through the API: enforcement with a fake clock, usage reports, invoices."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest

from hutch.api.deps import Services
from hutch.models.events import UsageHeartbeat
from hutch.services.clock import FakeClock
from tests.unit.api.conftest import AppFactory, Client, World, build_world


def beat(
    sid: str, start: datetime, end: datetime, vcpu: int = 1, mem: int = 1024
) -> UsageHeartbeat:
    return UsageHeartbeat(
        sandbox_id=sid,
        vcpu=vcpu,
        memory_mb=mem,
        window_start=start,
        window_end=end,
        cpu_time_us=0,
    )


def create(client: Client, h: dict[str, str], **spec: object) -> dict[str, object]:
    r = client.post("/v1/sandboxes", headers=h, json=spec)
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


@pytest.fixture
def small_credit(svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """New accounts get $0.10 instead of $50, so a few hours use it up."""
    monkeypatch.setattr(svc.billing.credits, "promo_micros", 100_000)


@pytest.mark.usefixtures("small_credit")
def test_balance_crossing_zero_refuses_new_and_stops_running_after_grace(
    client: Client, svc: Services, world: World, clock: FakeClock
) -> None:
    start = clock.now()  # the runner's own clock may differ; the heartbeat says what ran
    sb = create(client, world.owner.h)
    sid = str(sb["sandbox_id"])
    clock.advance(3 * 3600)  # 3 h of 1 vCPU + 1 GiB = $0.123 > $0.10
    svc.billing.metering.ingest([beat(sid, start, clock.now())])
    summary = client.get("/v1/billing/summary", headers=world.owner.h).json()
    assert summary["balance_micros"] == 100_000 - 123_000
    assert summary["warning"] == "balance_depleted"

    r = client.post("/v1/sandboxes", headers=world.member.h, json={})
    assert r.status_code == 402 and r.json()["code"] == "payment_required"
    assert "payment method" in r.json()["detail"]
    assert client.get("/v1/sandboxes", headers=world.owner.h).json()["items"][0]["state"] == (
        "running"
    )  # refused without leaving a row behind; the running one keeps running for now

    report = client.run(svc.billing.tick())
    assert report.warned == [world.team_id] and report.depleted == [world.team_id]
    assert report.stopped == []  # warnings first
    summary = client.get("/v1/billing/summary", headers=world.owner.h).json()
    types = [e["type"] for e in summary["events"]]
    assert types == ["balance_depleted", "low_balance"]
    grace = svc.billing.grace
    assert summary["stop_at"] == (clock.now() + grace).isoformat().replace("+00:00", "Z")

    clock.advance(grace.total_seconds() - 1)
    assert client.run(svc.billing.tick()).stopped == []
    clock.advance(1)
    assert client.run(svc.billing.tick()).stopped == [sid]
    got = client.get(f"/v1/sandboxes/{sid}", headers=world.owner.h).json()
    assert (got["state"], got["end_reason"]) == ("stopped", "payment required")

    # test mode is free and never blocked; other teams are unaffected
    assert client.post("/v1/sandboxes", headers=world.test.h, json={}).status_code == 201
    assert client.post("/v1/sandboxes", headers=world.other.h, json={}).status_code == 201

    # with a payment method (invoice terms, set by a server administrator) usage continues
    r = client.post("/v1/billing/payment-method", headers=world.root.h)
    assert r.status_code == 200 and r.json()["payment_method"] == "invoice"
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201
    assert client.run(svc.billing.tick()).stopped == []


@pytest.mark.usefixtures("small_credit")
def test_new_credit_lifts_the_block(
    client: Client, svc: Services, world: World, clock: FakeClock
) -> None:
    # Usage is recorded per UTC day and drawn from credit by the hour: the three hours below must
    # not cross midnight, or the grant would also cover the new day's first hour (it is effective
    # within it). Moving the clock back keeps the runner's real start time after `start`.
    clock.set(clock.now().replace(hour=min(clock.now().hour, 20)))
    start = clock.now()
    sb = create(client, world.owner.h)
    clock.advance(3 * 3600)
    svc.billing.metering.ingest([beat(str(sb["sandbox_id"]), start, clock.now())])
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 402
    r = client.post(
        "/v1/billing/credits", headers=world.root.h, json={"team_id": world.team_id, "amount": "5"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["amount_micros"] == 5_000_000
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201
    credits = client.get("/v1/billing/credits", headers=world.owner.h).json()
    # the welcome credit is used up; the new grant is whole (it came after the usage), and the
    # $0.023 not covered is owed, so the balance is what is left minus what is owed
    assert sorted(c["remaining_micros"] for c in credits) == [0, 5_000_000]
    summary = client.get("/v1/billing/summary", headers=world.owner.h).json()
    assert summary["balance_micros"] == 5_000_000 - 23_000


def test_grant_validation(client: Client, world: World) -> None:
    r = client.post(
        "/v1/billing/credits", headers=world.root.h, json={"team_id": world.team_id, "amount": "-1"}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "amount"
    r = client.post(
        "/v1/billing/credits", headers=world.root.h, json={"team_id": "team_nope", "amount": "1"}
    )
    assert r.status_code == 404


def test_usage_reports_group_and_price_exactly(
    client: Client, svc: Services, world: World, clock: FakeClock
) -> None:
    start = clock.now()
    a = create(client, world.owner.h, vcpu=2, memory_mb=2048)
    b = create(client, world.owner.h)
    t = test = create(client, world.test.h)
    clock.advance(3600)
    svc.billing.metering.ingest(
        [
            beat(str(a["sandbox_id"]), start, start + timedelta(hours=1), 2, 2048),
            beat(str(b["sandbox_id"]), start, start + timedelta(minutes=30)),
            beat(str(t["sandbox_id"]), start, start + timedelta(hours=1)),
        ]
    )
    h = world.owner.h
    by_sandbox = client.get("/v1/billing/usage?group_by=sandbox", headers=h).json()
    costs = {i["sandbox_id"]: (i["seconds"], i["cost_micros"]) for i in by_sandbox["items"]}
    assert costs == {a["sandbox_id"]: ("3600", 82_000), b["sandbox_id"]: ("1800", 20_500)}
    assert by_sandbox["total_micros"] == 102_500
    by_size = client.get("/v1/billing/usage?group_by=size", headers=h).json()
    assert {i["key"]: i["cost_micros"] for i in by_size["items"]} == {
        "1 vCPU · 1024 MiB": 20_500,
        "2 vCPU · 2048 MiB": 82_000,
    }
    by_project = client.get("/v1/billing/usage?group_by=project", headers=h).json()
    assert [(i["project_id"], i["cost_micros"]) for i in by_project["items"]] == [
        (world.project_id, 102_500)
    ]
    by_day = client.get("/v1/billing/usage?group_by=day", headers=h).json()
    assert sum(i["cost_micros"] for i in by_day["items"]) == 102_500
    summary = client.get("/v1/billing/summary", headers=h).json()
    assert summary["cost_this_period_micros"] == 102_500
    assert summary["balance_micros"] == 50_000_000 - 102_500
    assert summary["warning"] is None

    rows = list(csv.DictReader(io.StringIO(client.get("/v1/billing/usage.csv", headers=h).text)))
    assert {r["sandbox_id"] for r in rows} == {a["sandbox_id"], b["sandbox_id"]}
    assert sum(int(r["duration_ms"]) for r in rows) == 5_400_000

    # test mode: its own usage, free
    free = client.get("/v1/billing/usage?group_by=sandbox", headers=world.test.h).json()
    assert [(i["sandbox_id"], i["cost_micros"]) for i in free["items"]] == [(test["sandbox_id"], 0)]
    # another team sees none of it
    assert client.get("/v1/billing/usage", headers=world.other.h).json()["items"] == []

    up = client.get("/v1/billing/invoices/upcoming", headers=h).json()
    assert up["subtotal_micros"] == 102_500 and up["total_micros"] == 0
    assert {ln["description"] for ln in up["lines"]} == {
        "sandbox 1 vCPU · 1024 MiB",
        "sandbox 2 vCPU · 2048 MiB",
    }
    page = client.get("/v1/billing/invoices/upcoming/html", headers=h)
    assert page.headers["content-type"].startswith("text/html") and "$0.102500" in page.text
    r = client.get("/v1/billing/invoices/inv_01abc", headers=world.other.h)
    assert r.status_code == 404


def test_usage_range_is_checked(client: Client, world: World) -> None:
    r = client.get(
        "/v1/billing/usage?start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z",
        headers=world.owner.h,
    )
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_webhook_without_stripe_is_not_found(client: Client) -> None:
    r = client.post("/v1/billing/webhooks/stripe", content=b"{}")
    assert r.status_code == 404


@pytest.mark.parametrize(("enforce", "status"), [(True, 402), (False, 201)])
def test_enforcement_can_be_turned_off(make_app: AppFactory, enforce: bool, status: int) -> None:
    app = make_app(billing_enforce=enforce, billing_welcome_credit="0")
    svc: Services = app.state.services
    world = build_world(svc)
    client = Client(app)
    try:
        r = client.post("/v1/sandboxes", headers=world.owner.h, json={})
        assert r.status_code == status, r.text
    finally:
        client.close()


def test_low_balance_warns_without_stopping(
    client: Client, svc: Services, world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svc.billing.credits, "promo_micros", 6_000_000)  # $6, threshold $5
    start = clock.now()
    sid = str(create(client, world.owner.h, vcpu=16, memory_mb=65536)["sandbox_id"])
    clock.advance(3600)  # $1.64
    svc.billing.metering.ingest([beat(sid, start, clock.now(), 16, 65536)])
    report = client.run(svc.billing.tick())
    assert (report.warned, report.depleted, report.stopped) == ([world.team_id], [], [])
    summary = client.get("/v1/billing/summary", headers=world.owner.h).json()
    assert summary["warning"] == "low_balance" and summary["stop_at"] is None
    assert [e["type"] for e in summary["events"]] == ["low_balance"]
    assert client.run(svc.billing.tick()).warned == []  # once, not every pass
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201


def test_model_usage_is_reported_and_invoiced_through_the_price_book(
    client: Client, svc: Services, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decimal import Decimal

    from hutch.services.pricing import ModelRate

    book = svc.billing.metering.prices
    rate = ModelRate(input_per_million=Decimal("3"), output_per_million=Decimal("15"))
    monkeypatch.setitem(book.versions[-1].models, "m1", rate)
    n = svc.billing.metering.record_model_usage(
        request_id="req_01abc",
        team_id=world.team_id,
        project_id=world.project_id,
        mode="live",
        model="m1",
        input_tokens=1000,
        output_tokens=200,
    )
    assert n == 2
    report = client.get("/v1/billing/usage?group_by=project", headers=world.owner.h).json()
    # 1000 x $3/M + 200 x $15/M = $0.003 + $0.003
    assert [(i["tokens"], i["cost_micros"]) for i in report["items"]] == [(1200, 6000)]
    lines = client.get("/v1/billing/invoices/upcoming", headers=world.owner.h).json()["lines"]
    assert sorted((ln["description"], ln["amount_micros"]) for ln in lines) == [
        ("model m1 input", 3000),
        ("model m1 output", 3000),
    ]
