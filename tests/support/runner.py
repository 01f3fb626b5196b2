"""A real runner process (root, real namespaces and cgroups) for tests that need sandboxes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore


@dataclass
class RunnerProc:
    """A runner started by a test."""

    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def socket(self) -> Path:
        return self.data_dir / "runner.sock"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the runner (SIGKILL simulates a crash)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)


def ensure_base_template() -> None:
    """The shared base template (built once per machine)."""
    TemplateStore(SHARED_TEST_TEMPLATE_DIR).ensure("base")


def _wait_healthy(sock: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://runner", timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"runner exited: {log.read_text()[-2000:]}")
            try:
                if c.get("/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"runner did not answer: {log.read_text()[-2000:]}")


def start_runner(
    data_dir: Path, env: dict[str, str] | None = None, netns: str | None = None
) -> RunnerProc:
    """Start `python -m hutch.runner` on `data_dir` (inside the named network namespace, if
    given) and wait until it answers."""
    data_dir.mkdir(mode=0o700, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}.log"
    full_env = {**os.environ, "HUTCH_RUNNER_TEMPLATE_DIR": str(SHARED_TEST_TEMPLATE_DIR)}
    full_env.update(env or {})
    with open(log, "ab") as out:
        enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        proc = subprocess.Popen(
            [*enter, sys.executable, "-m", "hutch.runner", "--data-dir", str(data_dir)],
            stdout=out,
            stderr=out,
            env=full_env,
        )
    rp = RunnerProc(data_dir, proc, log)
    _wait_healthy(rp.socket, proc, log)
    return rp


def kill_all(rp: RunnerProc) -> None:
    """Kill every sandbox of a runner through its API."""
    transport = httpx.HTTPTransport(uds=str(rp.socket))
    with httpx.Client(transport=transport, base_url="http://runner", timeout=30) as c:
        for sb in c.get("/v1/sandboxes").json():
            c.delete(f"/v1/sandboxes/{sb['sandbox_id']}")
