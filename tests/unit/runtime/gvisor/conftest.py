"""Fixtures for the gVisor runtime tests: a template rootfs, sandbox plans, a command helper.

Rootfs used (first that exists): $HUTCH_TEST_ROOTFS, the built base template
(/var/cache/hutch/templates/base/rootfs), or a plain `debootstrap --variant=minbase bookworm`
tree with a `user` account (uid 1000) at /var/cache/hutch/gvisor-test-rootfs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hutch.ids import new_id
from hutch.models import ExecRequest, IsolationClass
from hutch.runtime.base import ExitStatus, ProcessStdio, SandboxPlan
from hutch.runtime.gvisor import GVisorRuntime, RunscOptions, scan

RUNSC = Path("/usr/bin/runsc")
ROOTFS_CANDIDATES = [
    Path(p)
    for p in (
        os.environ.get("HUTCH_TEST_ROOTFS", ""),
        "/var/cache/hutch/templates/base/rootfs",
        "/var/cache/hutch/gvisor-test-rootfs",
    )
    if p
]
STATE_BASE = Path("/var/tmp/hutch-gvisor-tests")
WORK_DIR = STATE_BASE / "work"
# Own cgroup parent and exposure dir: a runner started by another suite on this host reaps
# unknown sandboxes under the production `hutch` parent, and must not see these.
TEST_OPTIONS = RunscOptions(
    cgroup_parent="hutch-gvisor-test", expose_dir=Path("/run/hutch-gvisor-test")
)


def _usable_rootfs(p: Path) -> bool:
    try:
        return (p / "bin/sh").exists() and ":1000:" in (p / "etc/passwd").read_text()
    except OSError:
        return False


def find_rootfs() -> Path | None:
    """The first usable test rootfs."""
    return next((p for p in ROOTFS_CANDIDATES if _usable_rootfs(p)), None)


def gvisor_skip_reason() -> str | None:
    """Why the gVisor integration tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "gVisor runtime tests need root"
    if not RUNSC.exists():
        return f"runsc is not installed at {RUNSC} (Debian package `runsc`)"
    if find_rootfs() is None:
        return "no test rootfs: build the base template or " + str(ROOTFS_CANDIDATES[-1])
    return None


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Run async tests on asyncio (the runner's loop)."""
    return "asyncio"


@pytest.fixture(scope="module")
def runtime() -> GVisorRuntime:
    """A runtime with the default runsc options; skips when gVisor cannot run here."""
    reason = gvisor_skip_reason()
    if reason:
        pytest.skip(reason)
    rt = GVisorRuntime(WORK_DIR, options=TEST_OPTIONS)
    health = rt.health()
    if not health.available:
        pytest.skip(f"gVisor unavailable: {health.reason}")
    return rt


def make_plan(**overrides: object) -> SandboxPlan:
    """A plan with its state dir prepared as the runner would (the runtime adds its disk)."""
    rootfs = find_rootfs()
    assert rootfs is not None
    sandbox_id = new_id("sbx")
    # A uid range nobody else on this machine uses, so other suites' sweeps never touch it.
    uid_base = 3_000_000 + secrets.randbelow(1000) * 65536
    STATE_BASE.mkdir(exist_ok=True)
    STATE_BASE.chmod(0o700)  # like the runner's data dir: runsc must not need to walk it
    state_dir = STATE_BASE / sandbox_id
    state_dir.mkdir(mode=0o700)
    fields: dict[str, object] = {
        "sandbox_id": sandbox_id,
        "isolation": IsolationClass.gvisor,
        "template_layers": (rootfs,),
        "vcpu": 1,
        "memory_mb": 512,
        "disk_mb": 1024,
        "env": {"HUTCH_TEST_PLAN_ENV": "from-plan"},
        "uid_base": uid_base,
        "slot": 1,
        "state_dir": state_dir,
    }
    fields.update(overrides)
    return SandboxPlan(**fields)  # type: ignore[arg-type]


def remove_state_dir(plan: SandboxPlan) -> None:
    """What the runner does after destroy: drop the state dir (upper/work included)."""
    if scan(plan, TEST_OPTIONS).empty():
        shutil.rmtree(plan.state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
async def sandbox(runtime: GVisorRuntime) -> AsyncIterator[SandboxPlan]:
    """One running sandbox shared by a module's tests (creating one costs a few 100 ms)."""
    plan = make_plan()
    try:
        await runtime.create(plan)
        yield plan
    finally:
        await runtime.destroy(plan)
        remove_state_dir(plan)


@pytest.fixture
def fresh_plan() -> Iterator[SandboxPlan]:
    """A plan for a test that creates and destroys its own sandbox."""
    if gvisor_skip_reason():
        pytest.skip(gvisor_skip_reason() or "")
    plan = make_plan()
    yield plan
    remove_state_dir(plan)


@dataclass
class Output:
    """What a finished command produced."""

    status: ExitStatus
    stdout: str
    stderr: str
    pid: int


async def _drain(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    os.set_blocking(fd, False)
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda f=fut: f.done() or f.set_result(None))  # type: ignore[misc]
        try:
            await fut
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(chunk)


async def run(
    runtime: GVisorRuntime,
    plan: SandboxPlan,
    cmd: list[str] | str,
    timeout: float = 30,
    **kw: Any,
) -> Output:
    """Run a command to completion with pipes and collect its output."""
    req = ExecRequest(cmd=cmd, **kw)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    proc, waiter = await runtime.spawn(plan, req, ProcessStdio(stdout=out_w, stderr=err_w))
    out, err, status = await asyncio.wait_for(
        asyncio.gather(_drain(out_r), _drain(err_r), waiter.wait()), timeout
    )
    return Output(status, out.decode(), err.decode(), proc.pid)
