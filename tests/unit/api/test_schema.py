"""Property-based run of every non-sandbox operation in /openapi.json: no input yields a 5xx.

Cases come from schemathesis (valid and invalid inputs derived from the schema); they are driven
by a plain Hypothesis loop per operation, called in-process through the ASGI app.
"""

from __future__ import annotations

import time

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hutch.api.deps import Services
from tests.unit.api.conftest import build_world

EXAMPLES_PER_OPERATION = 15


def test_no_server_errors(app: FastAPI) -> None:
    svc: Services = app.state.services
    world = build_world(svc)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [
        r.ok() for r in schema.get_all_operations() if not r.ok().path.startswith("/v1/sandboxes")
    ]
    assert len(operations) >= 15, [op.label for op in operations]
    failures: list[str] = []
    calls = 0
    start = time.monotonic()
    for op in operations:
        cases = st.one_of(
            op.as_strategy(), op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
        )

        @given(case=cases, auth=st.sampled_from(["root", "viewer", "other", "none"]))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case, auth: str) -> None:
            nonlocal calls
            headers = {} if auth == "none" else world.users[auth].h
            response = case.call(headers={**(case.headers or {}), **headers})
            calls += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.operation.label} -> {response.status_code}: {response.text[:200]}"
                )
            if response.status_code >= 400:
                ctype = {k.lower(): v for k, v in response.headers.items()}["content-type"]
                assert ctype[0] == "application/problem+json", (
                    case.operation.label,
                    response.status_code,
                )

        run()
    print(f"schemathesis: {calls} calls over {len(operations)} operations")
    assert failures == []
    assert calls >= len(operations) * 5
    assert time.monotonic() - start < 60
