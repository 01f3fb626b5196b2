"""Offline billing: no processor; finalized invoices are written as JSON and HTML files."""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict
from pathlib import Path

from hutch.models.common import ErrorCode, HutchError
from hutch.services.billing.base import (
    BillingAdapter,
    Customer,
    InvoiceDoc,
    MeterEvent,
    WebhookEvent,
)
from hutch.services.pricing import format_dollars


def render_html(doc: InvoiceDoc) -> str:
    """A readable, self-contained HTML invoice (every value escaped)."""
    e = html.escape
    sub, cred, total = (
        e(format_dollars(m)) for m in (doc.subtotal_micros, doc.credits_micros, doc.total_micros)
    )
    rows = "\n".join(
        f"<tr><td>{e(str(line['project_id']))}</td><td>{e(str(line['description']))}</td>"
        f"<td class=n>{e(str(line['quantity']))} {e(str(line['unit']))}</td>"
        f"<td class=n>{e(format_dollars(int(line['amount_micros'])))}</td></tr>"
        for line in doc.lines
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invoice {e(doc.invoice_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{padding:.3em .8em;border-bottom:1px solid #ddd}}.n{{text-align:right}}</style></head>
<body><h1>Invoice {e(doc.invoice_id)}</h1>
<p>Team {e(doc.team_id)} &middot; period {e(doc.period)}</p>
<table><tr><th>project</th><th>item</th><th class=n>quantity</th><th class=n>amount</th></tr>
{rows}
<tr><td></td><td>subtotal</td><td></td><td class=n>{sub}</td></tr>
<tr><td></td><td>credits</td><td></td><td class=n>-{cred}</td></tr>
<tr><th></th><th>total due</th><th></th><th class=n>{total}</th></tr>
</table></body></html>
"""


class OfflineBilling(BillingAdapter):
    """Local monthly invoices in `DATA_DIR/invoices/TEAM/PERIOD.{json,html}`."""

    name = "offline"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure_customer(self, customer: Customer) -> str | None:
        """No processor, no customer."""
        return None

    def setup_link(self, customer_id: str | None) -> str | None:
        """Payment methods are recorded by a server administrator instead."""
        return None

    def report_usage(self, events: list[MeterEvent]) -> None:
        """Nothing to send."""

    def issue_invoice(self, customer_id: str | None, doc: InvoiceDoc) -> str | None:
        """Write the invoice files (atomically, so a reader never sees half a file)."""
        d = self.directory / doc.team_id
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for suffix, text in (
            ("json", json.dumps(asdict(doc), indent=2, sort_keys=True)),
            ("html", render_html(doc)),
        ):
            tmp = d / f".{doc.period}.{suffix}.tmp"
            tmp.write_text(text)
            os.replace(tmp, d / f"{doc.period}.{suffix}")
        return None

    def verify_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """There is no processor to send webhooks."""
        raise HutchError(
            ErrorCode.not_found, "Stripe is not configured on this server (offline billing)"
        )
