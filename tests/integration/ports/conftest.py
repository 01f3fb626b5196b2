"""A real `hutch serve` (with its runner) for the exposed-port tests, and a sandbox serving the
test app on a port."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.sandbox_app import APP_PATH, APP_SOURCE
from tests.integration.sdk import server as srv

pytestmark = [pytest.mark.root, pytest.mark.slow]
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def hutch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[srv.Server]:
    """`hutch serve` on a free loopback port (SQLite in its own data dir)."""
    if os.geteuid() != 0:
        pytest.skip("the runner needs root (namespaces, cgroups)")
    server = srv.start_server(tmp_path_factory.mktemp("hutch-ports") / "data")
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Served:
    """A sandbox running the test app on `port`."""

    sandbox_id: str
    port: int
    api: httpx.Client  # with the admin key

    @property
    def path(self) -> str:
        return f"/v1/sandboxes/{self.sandbox_id}/ports/{self.port}"

    @property
    def host(self) -> str:
        return f"{self.port}-{self.sandbox_id.replace('_', '-')}.localhost"


def start_app(api: httpx.Client, sandbox_id: str, port: int) -> None:
    """Run the test app in the sandbox and poll (with a deadline) until the proxy reaches it."""
    r = api.put(f"/v1/sandboxes/{sandbox_id}/files", params={"path": APP_PATH}, content=APP_SOURCE)
    assert r.status_code == 200, r.text
    r = api.post(
        f"/v1/sandboxes/{sandbox_id}/exec",
        json={"cmd": ["python3", APP_PATH, str(port)], "background": True, "timeout_s": None},
    )
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + DEADLINE_S
    while True:
        r = api.get(f"/v1/sandboxes/{sandbox_id}/ports/{port}/")
        if r.status_code == 200:
            return
        assert r.status_code == 502 and time.monotonic() < deadline, r.text
        time.sleep(0.05)


@pytest.fixture(scope="module")
def api(hutch: srv.Server) -> Iterator[httpx.Client]:
    """An HTTP client with the admin key."""
    h = {"Authorization": f"Bearer {hutch.admin_key}"}
    with httpx.Client(base_url=hutch.url, headers=h, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def served(api: httpx.Client) -> Iterator[Served]:
    """One sandbox serving the app on port 8000 for the module."""
    r = api.post("/v1/sandboxes", json={"timeout_s": 600})
    assert r.status_code == 201, r.text
    sid = r.json()["sandbox_id"]
    start_app(api, sid, 8000)
    yield Served(sid, 8000, api)
    api.delete(f"/v1/sandboxes/{sid}")
