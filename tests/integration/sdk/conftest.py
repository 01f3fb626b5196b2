"""End-to-end fixtures: a real `hutch serve` on loopback, and sandboxes made through the SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.sdk import server as srv


@pytest.fixture(scope="session")
def hutch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[srv.Server]:
    """The API under test (a real `hutch serve`); skips only without root, saying why."""
    ext = srv.external()
    if ext is not None:
        yield ext
        return
    why = srv.missing_pieces()
    if why:
        pytest.skip(why)
    data_dir = tmp_path_factory.mktemp("hutch-data")
    server, proc = srv.start(data_dir)
    try:
        yield server
    finally:
        srv.stop(proc)


@pytest.fixture
def api(hutch_server: srv.Server, monkeypatch: pytest.MonkeyPatch) -> srv.Server:
    """Point the SDK (and CLI) at the server through the environment, as a user would."""
    monkeypatch.setenv("HUTCH_API_URL", hutch_server.url)
    monkeypatch.setenv("HUTCH_API_KEY", hutch_server.admin_key)
    return hutch_server
