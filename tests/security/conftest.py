"""A real runner for the security suite, and helpers to attack it from inside sandboxes.

One runner serves the whole session. Its data directory lives under /var/tmp (pytest's tmp_path
is not traversable by other users, and sandbox set-up runs as the sandbox's unprivileged host
uid). Every sandbox a test creates is killed when the test ends; the runner, whatever sandboxes
are left and the directory go at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hutch.models import ExecRequest, ExecResult, ExecUser, RunnerCreate
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore

READY_TIMEOUT_S = 120.0
# Away from the runner's default (1_000_000) so sandboxes of other runners on this machine never
# share host uids with ours; a multiple of the per-sandbox range keeps the arithmetic obvious.
UID_BASE = 1_000_000 + 65536 * (64 + secrets.randbelow(512))


@dataclass
class Runner:
    """A running `python -m hutch.runner`."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    socket: Path
    log: Path
    uid_base: int

    def client(self) -> RunnerClient:
        """A new client of this runner (close it after use)."""
        return RunnerClient(self.socket, timeout=60)

    def output(self) -> str:
        """What the runner wrote to stdout/stderr so far."""
        return self.log.read_text(errors="replace")


def _health(sock: Path) -> bool:
    transport = httpx.HTTPTransport(uds=str(sock))
    try:
        with httpx.Client(transport=transport, base_url="http://runner", timeout=2) as c:
            return c.get("/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


def _kill_all(sock: Path) -> None:
    transport = httpx.HTTPTransport(uds=str(sock))
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.Client(transport=transport, base_url="http://runner", timeout=30) as c,
    ):
        for sb in c.get("/v1/sandboxes").json():
            c.delete(f"/v1/sandboxes/{sb['sandbox_id']}")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """The suite runs on asyncio."""
    return "asyncio"


def start_runner(uid_base: int) -> Runner:
    """Start a runner with a fresh data directory under /var/tmp; wait until it answers."""
    data_dir = Path(f"/var/tmp/hutch-sec-{secrets.token_hex(6)}")
    data_dir.mkdir(mode=0o711)
    os.chmod(data_dir, 0o711)
    sock = data_dir / "runner.sock"
    log = data_dir / "runner.log"
    env = {
        **os.environ,
        "HUTCH_RUNNER_TEMPLATE_DIR": str(SHARED_TEST_TEMPLATE_DIR),
        "HUTCH_RUNNER_UID_BASE": str(uid_base),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hutch.runner", "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    r = Runner(proc, data_dir, sock, log, uid_base)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (sock.exists() and _health(sock)):
            if proc.poll() is not None:
                raise AssertionError(f"the runner exited with {proc.returncode}:\n{r.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the runner did not become ready:\n{r.output()}")
            time.sleep(0.05)
    except BaseException:
        stop_runner(r)
        raise
    return r


def stop_runner(r: Runner, keep_log: Path | None = None) -> None:
    """Kill the runner's sandboxes, stop it and remove its data directory."""
    if r.proc.poll() is None:
        _kill_all(r.socket)
        r.proc.terminate()
        try:
            r.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
    if keep_log is not None:
        with contextlib.suppress(OSError):
            shutil.copy(r.log, keep_log)
    shutil.rmtree(r.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """A runner on the shared `base` template for the whole session (its log is kept in the
    session's pytest temporary directory)."""
    if os.geteuid() != 0:
        pytest.skip("the runner needs root")
    TemplateStore(SHARED_TEST_TEMPLATE_DIR).ensure("base")
    r = start_runner(UID_BASE)
    yield r
    stop_runner(r, keep_log=tmp_path_factory.getbasetemp() / "runner.log")


@pytest.fixture
async def client(runner: Runner) -> AsyncIterator[RunnerClient]:
    """A runner client for one test."""
    async with runner.client() as c:
        yield c


NewSandbox = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_sandbox(client: RunnerClient) -> AsyncIterator[NewSandbox]:
    """Create sandboxes (keyword arguments go to RunnerCreate); all are killed after the test."""
    made: list[str] = []

    async def make(**spec: Any) -> str:
        spec.setdefault("timeout_s", 600)
        spec.setdefault("memory_mb", 512)
        spec.setdefault("disk_mb", 256)
        info = await client.create(RunnerCreate(**spec))
        made.append(info.sandbox_id)
        return info.sandbox_id

    yield make
    for sid in made:
        with contextlib.suppress(Exception):
            await client.kill(sid)


async def sh(
    client: RunnerClient,
    sid: str,
    cmd: str | list[str],
    *,
    user: ExecUser = ExecUser.root,
    timeout_s: float = 30,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> ExecResult:
    """Run a command (a string goes through bash) inside a sandbox, root by default."""
    req = ExecRequest(cmd=cmd, user=user, timeout_s=timeout_s, stdin=stdin, env=env or {})
    return await client.run(sid, req)


def host_marker(tag: str) -> tuple[Path, str]:
    """A secret file on the host, outside every sandbox; returns (path, content)."""
    secret = f"hutch-host-secret-{tag}-{secrets.token_hex(16)}"
    path = Path(f"/var/tmp/{secret[:40]}")
    path.write_text(secret)
    os.chmod(path, 0o644)  # readable by anyone on the host: only isolation keeps it out
    return path, secret


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """A host secret that no sandbox may reach, removed after the test."""
    path, secret = host_marker(request.node.name[:8])
    yield path, secret
    path.unlink(missing_ok=True)


def cgroup_dir(controller: str, sid: str) -> Path:
    """A sandbox's cgroup directory for `controller` on this cgroup v1 host (under the runner's
    `hutch` parent, possibly one level deeper)."""
    base = Path("/sys/fs/cgroup") / controller
    for pattern in (f"hutch/{sid}", f"hutch*/{sid}", f"hutch*/*/{sid}"):
        found = sorted(base.glob(pattern))
        if found:
            return found[0]
    raise AssertionError(f"no {controller} cgroup for sandbox {sid}")


def cgroup_file(controller: str, sid: str, name: str) -> Path:
    """A file of a sandbox's cgroup, e.g. cgroup_file("memory", sid, "memory.limit_in_bytes")."""
    return cgroup_dir(controller, sid) / name


def host_pids_of_cgroup(sid: str) -> list[int]:
    """Host pids in a sandbox's pids cgroup."""
    return [int(x) for x in cgroup_file("pids", sid, "cgroup.procs").read_text().split()]
