"""A real `hutch serve` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hutch.db.session import Database


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running `hutch serve`."""

    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.data_dir / 'admin-key').read_text().strip()}"}

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    database: Database, tmp_path: Path, *args: str, ready_timeout: float = 60
) -> Server:
    """Start `hutch serve` with `args` and wait until /healthz answers."""
    port = free_port()
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    env = {**os.environ, "HUTCH_DATABASE_URL": database.url}
    env.pop("HUTCH_KEY_PEPPER", None)
    cmd = [
        sys.executable,
        "-m",
        "hutch.cli.main",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}", data_dir, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hutch serve exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"hutch serve did not become ready:\n{server.output()}")


@pytest.fixture
def server(database: Database, tmp_path: Path) -> Iterator[Server]:
    """`hutch serve --no-runner` on the test database."""
    s = start_server(database, tmp_path, "--no-runner")
    yield s
    if s.proc.poll() is None:
        s.stop()
