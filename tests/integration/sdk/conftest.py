"""End-to-end fixtures: a real `hutch serve` on loopback, and sandboxes made through the SDK."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.server import Server, external, start_server


@pytest.fixture(scope="session")
def hutch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The API under test (a real `hutch serve`); skips only without root, saying why."""
    ext = external()
    if ext is not None:
        yield ext
        return
    if os.geteuid() != 0:
        pytest.skip("the runner needs root (namespaces, cgroups)")
    server = start_server(tmp_path_factory.mktemp("hutch") / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(hutch_server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """Point the SDK (and CLI) at the server through the environment, as a user would."""
    monkeypatch.setenv("HUTCH_API_URL", hutch_server.url)
    monkeypatch.setenv("HUTCH_API_KEY", hutch_server.admin_key)
    return hutch_server
