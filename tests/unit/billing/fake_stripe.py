"""A tiny stand-in for the Stripe API on loopback: only the endpoints Hutch calls.

Stripe cannot be reached from the test machine; `StripeBilling` talks to this server through the
official library (its API-base setting), so requests are built, encoded and parsed for real.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Calls:
    """Requests the fake received: (method, path, form fields, idempotency key)."""

    items: list[tuple[str, str, dict[str, str], str | None]] = field(default_factory=list)
    auth: set[str] = field(default_factory=set)
    # path -> how many more requests to it answer 500 (a Stripe outage)
    fail: dict[str, int] = field(default_factory=dict)

    def paths(self) -> list[str]:
        return [p for _, p, _, _ in self.items]

    def to(self, path: str) -> list[dict[str, str]]:
        return [f for _, p, f, _ in self.items if p == path]


def _handler(calls: Calls) -> type[BaseHTTPRequestHandler]:
    seq = count(1)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            form = dict(parse_qsl(self.rfile.read(n).decode()))
            calls.items.append(("POST", self.path, form, self.headers.get("idempotency-key")))
            calls.auth.add(self.headers.get("authorization") or "")
            if calls.fail.get(self.path, 0) > 0:
                calls.fail[self.path] -= 1
                self.send_response(500)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            i = next(seq)
            body: dict[str, Any]
            if self.path == "/v1/customers":
                body = {"id": f"cus_{i}", "object": "customer"}
            elif self.path == "/v1/checkout/sessions":
                body = {
                    "id": f"cs_{i}",
                    "object": "checkout.session",
                    "url": f"https://checkout.example.test/cs_{i}",
                }
            elif self.path == "/v1/billing/meter_events":
                body = {"object": "billing.meter_event", "identifier": form.get("identifier")}
            elif self.path == "/v1/invoiceitems":
                body = {"id": f"ii_{i}", "object": "invoiceitem"}
            elif self.path == "/v1/invoices":
                body = {"id": f"in_{i}", "object": "invoice", "status": "draft"}
            elif self.path.startswith("/v1/invoices/") and self.path.endswith("/finalize"):
                body = {"id": self.path.split("/")[3], "object": "invoice", "status": "open"}
            else:
                self.send_response(404)
                self.end_headers()
                return
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler


@contextmanager
def fake_stripe() -> Iterator[tuple[str, Calls]]:
    """Serve the fake on a free loopback port; yields its base URL and the calls it gets."""
    calls = Calls()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(calls))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sign(payload: bytes, secret: str, at: int | None = None) -> str:
    """A `Stripe-Signature` header as Stripe computes it."""
    ts = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def event(type_: str, obj: dict[str, Any]) -> bytes:
    """A webhook body."""
    return json.dumps(
        {"id": f"evt_{type_}", "object": "event", "type": type_, "data": {"object": obj}}
    ).encode()
