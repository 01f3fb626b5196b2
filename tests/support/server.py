"""A real `hutch serve` process on a free loopback port, shared by the API, SDK and CLI tests.

`external()` names a server given through HUTCH_TEST_API_URL / HUTCH_TEST_API_KEY instead."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A Hutch API the tests talk to; `proc` is None for an external one."""

    url: str
    admin_key: str
    data_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def admin_headers(self) -> dict[str, str]:
        """Authorization header of the first-start admin key."""
        return {"Authorization": f"Bearer {self.admin_key}"}

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL if it does not go; the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def output(self) -> str:
        """Everything the server wrote so far."""
        return self.log.read_text(errors="replace") if self.log else ""


def start_server(
    data_dir: Path,
    *args: str,
    database_url: str | None = None,
    ready_timeout: float = 180,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `hutch serve --data-dir DATA_DIR ARGS` and wait (polling, with a deadline) until it
    answers with the admin key it wrote; raise with its log if it dies or never becomes ready."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}-serve.log"
    full_env = {**os.environ, "HUTCH_RUNNER_TEMPLATE_DIR": str(SHARED_TEST_TEMPLATE_DIR)}
    for name in ("HUTCH_API_KEY", "HUTCH_KEY_PEPPER", "HUTCH_DATABASE_URL"):
        full_env.pop(name, None)
    if database_url:
        full_env["HUTCH_DATABASE_URL"] = database_url
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "hutch.cli.main", "serve", "--data-dir", str(data_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    key_file = data_dir / "admin-key"
    deadline = time.monotonic() + ready_timeout
    server = Server(url, "", data_dir, proc, log)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hutch serve exited with {proc.returncode}:\n{server.output()}")
        key = key_file.read_text().strip() if key_file.exists() else ""
        if key:
            try:
                r = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=2)
                if r.status_code == 200:
                    server.admin_key = key
                    return server
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    server.stop()
    raise AssertionError(
        f"hutch serve not ready after {ready_timeout}s:\n{server.output()[-4000:]}"
    )


def external() -> Server | None:
    """A server given through the environment, if any."""
    url, key = os.environ.get("HUTCH_TEST_API_URL"), os.environ.get("HUTCH_TEST_API_KEY")
    return Server(url.rstrip("/"), key) if url and key else None
