"""A real `hutch serve` process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.db.session import Database
from tests.support.server import Server, free_port
from tests.support.server import start_server as _start

__all__ = ["Server", "free_port", "start_server"]


def start_server(
    database: Database, tmp_path: Path, *args: str, ready_timeout: float = 180
) -> Server:
    """`hutch serve ARGS` on `tmp_path/data` and the test database."""
    return _start(tmp_path / "data", *args, database_url=database.url, ready_timeout=ready_timeout)


@pytest.fixture
def server(database: Database, tmp_path: Path) -> Iterator[Server]:
    """`hutch serve --no-runner` on the test database."""
    s = start_server(database, tmp_path, "--no-runner")
    yield s
    s.stop()
