"""Property-based run of every operation in /openapi.json: no input yields a 5xx, and every
error is problem+json.

Cases come from schemathesis (valid and invalid inputs derived from the schema); they are driven
by a plain Hypothesis loop per operation, called in-process through the ASGI app. Sandbox routes
run against the real runner behind the app, half of the time on a real running sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hutch.api.deps import Services
from tests.support.live_runner import LiveRunner
from tests.unit.api.conftest import Client, World, build_world

EXAMPLES_PER_OPERATION = 15
SANDBOX_EXAMPLES = 8


def _fuzz(
    app: FastAPI,
    world: World,
    sandbox: Callable[[], str] | None,
    want: Callable[[str], bool],
    examples: int,
) -> tuple[int, int, int]:
    """Run generated cases of the operations whose path `want`s; (operations, calls, 2xx)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations() if want(r.ok().path)]
    failures: list[str] = []
    calls = ok = 0
    for op in operations:
        cases = st.one_of(
            op.as_strategy(), op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
        )

        @given(
            case=cases,
            auth=st.sampled_from(["root", "viewer", "other", "none"]),
            real=st.booleans(),
        )
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case, auth: str, real: bool) -> None:
            nonlocal calls, ok
            if sandbox is not None and real and "sandbox_id" in (case.path_parameters or {}):
                case.path_parameters = {**(case.path_parameters or {}), "sandbox_id": sandbox()}
            headers = {} if auth == "none" else world.users[auth].h
            response = case.call(headers={**(case.headers or {}), **headers})
            calls += 1
            ok += response.status_code < 300
            # 503 (runner unavailable) and 502 (nothing listens on a proxied port) are
            # documented answers, not server errors.
            unreachable = response.status_code == 502 and (
                case.method.upper() == "HEAD"  # no body to read; GET carries the same answer
                or response.json().get("code") == "port_unreachable"
            )
            if response.status_code >= 500 and response.status_code != 503 and not unreachable:
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
    assert failures == []
    return len(operations), calls, ok


def test_no_server_errors(app: FastAPI) -> None:
    world = build_world(app.state.services)
    start = time.monotonic()
    ops, calls, _ = _fuzz(
        app, world, None, lambda p: not p.startswith("/v1/sandboxes"), EXAMPLES_PER_OPERATION
    )
    print(f"schemathesis: {calls} calls over {ops} operations")
    assert ops >= 15
    assert calls >= ops * 5
    assert time.monotonic() - start < 60


def test_no_server_errors_on_sandbox_routes(
    app: FastAPI, client: Client, runner: LiveRunner
) -> None:
    svc: Services = app.state.services
    world = build_world(svc)
    current: list[str] = []

    def sandbox() -> str:
        """A running sandbox of the root key's project (a new one once a case killed it)."""
        if not current or current[0] not in runner.sandbox_ids():
            r = client.post("/v1/sandboxes", headers=world.root.h, json={"timeout_s": 600})
            assert r.status_code == 201, r.text
            current[:] = [r.json()["sandbox_id"]]
        return current[0]

    start = time.monotonic()
    ops, calls, ok = _fuzz(
        app, world, sandbox, lambda p: p.startswith("/v1/sandboxes"), SANDBOX_EXAMPLES
    )
    print(f"schemathesis: {calls} calls ({ok} succeeded) over {ops} sandbox operations")
    assert ops >= 18
    assert calls >= ops * 4
    assert ok >= 6, "cases reached real sandboxes, not only error paths"
    assert time.monotonic() - start < 240
