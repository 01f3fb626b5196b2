"""Starts a real `hutch serve` on a free loopback port for end-to-end tests, or uses the server
named by HUTCH_TEST_API_URL / HUTCH_TEST_API_KEY when those are set."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SHARED_TEMPLATES = "/var/cache/hutch/templates"
START_DEADLINE_S = 180.0
# The pieces `hutch serve` needs; until they are in the tree the end-to-end tests skip.


@dataclass(frozen=True)
class Server:
    """A Hutch API the tests can talk to."""

    url: str
    admin_key: str
    data_dir: Path | None = None


def missing_pieces() -> str | None:
    """Why a server cannot be started here, or None if it can."""
    if os.geteuid() != 0:
        return "the runner needs root (namespaces, cgroups)"
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def start(data_dir: Path) -> tuple[Server, subprocess.Popen[bytes]]:
    """Start `hutch serve` and wait (polling, with a deadline) until it answers with the admin
    key it wrote; raise with its log if it dies or never becomes ready."""
    port = free_port()
    env = {**os.environ, "HUTCH_RUNNER_TEMPLATE_DIR": SHARED_TEMPLATES}
    env.pop("HUTCH_API_KEY", None)
    log = data_dir / "serve.log"
    cmd = [
        sys.executable,
        "-m",
        "hutch.cli.main",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    key_file = data_dir / "admin-key"
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hutch serve exited with {proc.returncode}:\n{_tail(log)}")
        if key_file.exists() and key_file.read_text().strip():
            key = key_file.read_text().strip()
            try:
                r = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=2)
                if r.status_code == 200:
                    return Server(url, key, data_dir), proc
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"hutch serve not ready after {START_DEADLINE_S}s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server (SIGTERM, then SIGKILL if it does not go)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def external() -> Server | None:
    """A server given through the environment, if any."""
    url, key = os.environ.get("HUTCH_TEST_API_URL"), os.environ.get("HUTCH_TEST_API_KEY")
    return Server(url.rstrip("/"), key) if url and key else None
