"""The Stripe adapter against a loopback fake of the Stripe API, and the signed webhook route."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from hutch.api.deps import Services
from hutch.db.billing import BillingAccountRow, InvoiceRow
from hutch.models.events import UsageHeartbeat
from tests.unit.api.conftest import AppFactory, Client, World, build_world
from tests.unit.billing.fake_stripe import Calls, event, fake_stripe, sign

SECRET = "whsec_test_0123456789"
HOOK = "/v1/billing/webhooks/stripe"


@pytest.fixture
def stripe_env(make_app: AppFactory) -> Iterator[tuple[Client, Services, World, Calls]]:
    with fake_stripe() as (url, calls):
        app = make_app(
            stripe_api_key="sk_test_fake", stripe_webhook_secret=SECRET, stripe_api_base=url
        )
        svc: Services = app.state.services
        client = Client(app)
        try:
            yield client, svc, build_world(svc), calls
        finally:
            client.close()


def post_hook(client: Client, body: bytes, sig: str | None) -> Any:
    headers = {"content-type": "application/json"}
    if sig is not None:
        headers["stripe-signature"] = sig
    return client.post(HOOK, content=body, headers=headers)


def account(svc: Services, team_id: str) -> BillingAccountRow:
    with svc.db.session() as s:
        row = s.get(BillingAccountRow, team_id)
        assert row is not None
        return row


def test_setup_link_creates_one_customer_per_team(stripe_env: Any) -> None:
    client, svc, world, calls = stripe_env
    r = client.post("/v1/billing/payment-method", headers=world.owner.h)
    assert r.status_code == 200, r.text
    assert r.json()["url"].startswith("https://checkout.example.test/")
    client.post("/v1/billing/payment-method", headers=world.admin.h)
    customers = calls.to("/v1/customers")
    assert len(customers) == 1 and customers[0]["metadata[team_id]"] == world.team_id
    sessions = calls.to("/v1/checkout/sessions")
    assert [s["mode"] for s in sessions] == ["setup", "setup"]
    assert {s["customer"] for s in sessions} == {account(svc, world.team_id).customer_id}
    assert calls.auth == {"Bearer sk_test_fake"}
    assert account(svc, world.team_id).payment_method is None  # not until Stripe confirms


def test_webhooks_need_a_valid_signature(stripe_env: Any) -> None:
    client, svc, world, _ = stripe_env
    client.post("/v1/billing/payment-method", headers=world.owner.h)
    customer = account(svc, world.team_id).customer_id
    body = event("checkout.session.completed", {"id": "cs_1", "customer": customer})
    for sig in (
        None,
        "garbage",
        sign(body, "whsec_wrong"),
        sign(body + b" ", SECRET),  # tampered body
        sign(body, SECRET, at=int(datetime.now(UTC).timestamp()) - 3600),  # replayed later
    ):
        r = post_hook(client, body, sig)
        assert r.status_code == 400, sig
        assert r.json()["code"] == "webhook_signature_invalid"
    assert account(svc, world.team_id).payment_method is None
    r = post_hook(client, body, sign(body, SECRET))
    assert r.status_code == 200 and r.json()["type"] == "checkout.session.completed"
    assert account(svc, world.team_id).payment_method == "card"


def test_usage_meter_events_and_invoices_and_payment_outcomes(stripe_env: Any) -> None:
    client, svc, world, calls = stripe_env
    client.post("/v1/billing/payment-method", headers=world.owner.h)
    customer = account(svc, world.team_id).customer_id
    body = event("setup_intent.succeeded", {"id": "seti_1", "customer": customer})
    assert post_hook(client, body, sign(body, SECRET)).status_code == 200

    clock = svc.clock
    clock.set(datetime(2030, 5, 31, 0, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    sid = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    start = clock.now()
    clock.set(start + timedelta(hours=24))  # type: ignore[attr-defined]
    # 24 h at 16 vCPU + 64 GiB = $39.36, twice: beyond the $50 welcome credit
    big = {"vcpu": 16, "memory_mb": 65536}
    svc.billing.metering.ingest(
        [
            UsageHeartbeat(
                sandbox_id=sid, window_start=start, window_end=clock.now(), cpu_time_us=0, **big
            )
        ]
    )
    report = client.run(svc.billing.tick())
    assert report.reported == 1 and report.stopped == []  # a card is on file
    meter = calls.to("/v1/billing/meter_events")
    assert len(meter) == 1 and meter[0]["identifier"] == f"{sid}@{start.isoformat()}"
    assert meter[0]["payload[stripe_customer_id]"] == customer
    assert client.run(svc.billing.tick()).reported == 0  # sent once

    clock.set(datetime(2030, 6, 1, 2, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    svc.billing.metering.ingest(
        [
            UsageHeartbeat(
                sandbox_id=sid,
                window_start=start + timedelta(hours=24),
                window_end=start + timedelta(hours=48),
                cpu_time_us=0,
                **big,
            )
        ]
    )
    report = client.run(svc.billing.tick())
    assert len(report.invoiced) == 1
    with svc.db.session() as s:
        inv = s.scalars(select(InvoiceRow)).one()
    # May: 24 h at $1.64 = $39.36, all covered by the welcome credit; nothing due
    assert (inv.period, inv.subtotal_micros, inv.total_micros) == ("2030-05", 39_360_000, 0)
    assert inv.status == "paid" and "/v1/invoices" not in calls.paths()

    clock.set(datetime(2030, 7, 1, 2, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    report = client.run(svc.billing.tick())
    with svc.db.session() as s:
        june = s.scalars(select(InvoiceRow).where(InvoiceRow.period == "2030-06")).one()
    # June: $39.36, of which the credit's last $10.64 is applied: $28.72 due, sent to Stripe
    assert (june.subtotal_micros, june.credits_micros, june.total_micros) == (
        39_360_000,
        10_640_000,
        28_720_000,
    )
    items = calls.to("/v1/invoiceitems")
    assert sorted(int(i["amount"]) for i in items) == [-1064, 3936]
    assert june.external_id is not None and june.status == "finalized"
    assert f"/v1/invoices/{june.external_id}/finalize" in calls.paths()

    # With a card on file the team is admitted, and admitted from memory for a few seconds
    # (billing.ADMIT_FOR); a payment failure ends that at once.
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201
    failed = event("invoice.payment_failed", {"id": june.external_id, "customer": customer})
    assert post_hook(client, failed, sign(failed, SECRET)).status_code == 200
    assert account(svc, world.team_id).state == "past_due"
    summary = client.get("/v1/billing/summary", headers=world.owner.h).json()
    assert summary["warning"] == "payment_failed"
    # credit is used up and the card failed: no new live sandboxes
    r = client.post("/v1/sandboxes", headers=world.owner.h, json={})
    assert r.status_code == 402 and "payment failed" in r.json()["detail"]

    paid = event("invoice.paid", {"id": june.external_id, "customer": customer})
    assert post_hook(client, paid, sign(paid, SECRET)).status_code == 200
    assert account(svc, world.team_id).state == "active"
    with svc.db.session() as s:
        assert s.get(InvoiceRow, june.id).status == "paid"  # type: ignore[union-attr]
    assert client.post("/v1/sandboxes", headers=world.owner.h, json={}).status_code == 201


def test_stripe_unreachable_is_a_clear_503(make_app: AppFactory) -> None:
    from tests.integration.api.conftest import free_port

    app = make_app(
        stripe_api_key="sk_test_fake",
        stripe_webhook_secret=SECRET,
        stripe_api_base=f"http://127.0.0.1:{free_port()}",  # nothing listens
    )
    svc: Services = app.state.services
    world = build_world(svc)
    client = Client(app)
    try:
        r = client.post("/v1/billing/payment-method", headers=world.owner.h)
        assert r.status_code == 503 and r.json()["code"] == "billing_unavailable"
    finally:
        client.close()


def test_an_invoice_stripe_refused_is_handed_over_on_the_next_pass(stripe_env: Any) -> None:
    client, svc, world, calls = stripe_env
    client.post("/v1/billing/payment-method", headers=world.owner.h)
    customer = account(svc, world.team_id).customer_id
    body = event("setup_intent.succeeded", {"id": "seti_1", "customer": customer})
    assert post_hook(client, body, sign(body, SECRET)).status_code == 200
    clock = svc.clock
    clock.set(datetime(2030, 5, 1, 0, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    sid = client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"]
    start = clock.now()
    clock.set(start + timedelta(days=20))  # type: ignore[attr-defined]
    svc.billing.metering.ingest(
        [
            UsageHeartbeat(
                sandbox_id=sid,
                vcpu=16,
                memory_mb=65536,
                window_start=start,
                window_end=clock.now(),
                cpu_time_us=0,
            )
        ]
    )
    clock.set(datetime(2030, 6, 1, 2, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    calls.fail["/v1/invoices"] = 10  # Stripe is down for invoices (and the library's retries)
    [inv] = svc.billing.invoices.close_due()
    with svc.db.session() as s:
        row = s.get(InvoiceRow, inv.id)
        assert row is not None and row.issued_at is None and row.external_id is None
    calls.fail.clear()
    assert svc.billing.invoices.close_due() == []  # nothing new is due ...
    with svc.db.session() as s:
        row = s.get(InvoiceRow, inv.id)
        assert row is not None and row.issued_at is not None  # ... but it was handed over
        assert row.external_id is not None and row.total_micros > 0
    created = [k for _, p, _, k in calls.items if p == "/v1/invoices"]
    assert len(set(created)) == 1  # the same idempotency key every time
