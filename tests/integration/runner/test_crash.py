"""Crash safety: SIGKILL the runner at several points; on restart every sandbox is either
adopted (and usable) or cleaned (nothing of it left on the host)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from hutch.config import RunnerSettings
from hutch.ids import new_id
from hutch.models import ErrorCode, ExecRequest, HutchError, RunnerCreate
from hutch.runner.client import RunnerClient
from hutch.runtime.namespace.cgroups import Cgroups
from tests.integration.runner.conftest import RunnerProc, start_runner
from tests.integration.runner.hostscan import leftovers

pytestmark = [pytest.mark.root, pytest.mark.anyio, pytest.mark.slow]


async def _adopted_or_clean(c: RunnerClient, rp: RunnerProc, sid: str) -> str:
    """'adopted' if the sandbox runs and answers, 'clean' if nothing of it remains."""
    try:
        await c.get(sid)
    except HutchError as e:
        assert e.code in (ErrorCode.sandbox_not_found, ErrorCode.sandbox_not_running)
        assert leftovers(sid, rp.data_dir / "sandboxes" / sid) == []
        return "clean"
    r = await c.run(sid, ExecRequest(cmd=["echo", "alive"]))
    assert r.stdout == "alive\n"
    await c.kill(sid)
    assert leftovers(sid, rp.data_dir / "sandboxes" / sid) == []
    return "adopted"


@pytest.fixture
def crash_dir(runner_dir: Path) -> Path:
    d = runner_dir / f"crash-{new_id('req')[-8:]}"
    return d


async def test_sigkill_during_create_at_several_points(crash_dir: Path) -> None:
    outcomes = []
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.2):
        rp = start_runner(crash_dir)
        sid = new_id("sbx")
        async with RunnerClient(rp.socket) as c:
            task = asyncio.create_task(c.create(RunnerCreate(sandbox_id=sid)))
            await asyncio.sleep(delay)
            rp.stop(signal.SIGKILL)
            try:
                await task
                created = True
            except HutchError:
                created = False
        rp = start_runner(crash_dir)
        try:
            async with RunnerClient(rp.socket) as c:
                outcome = await _adopted_or_clean(c, rp, sid)
        finally:
            rp.stop()
        # a create that was answered must survive the crash; an unanswered one may go either way
        assert outcome == "adopted" or not created
        outcomes.append(outcome)
    assert "clean" in outcomes  # the early kills did interrupt creates


async def test_sigkill_during_exec_adopts_the_sandbox(crash_dir: Path) -> None:
    rp = start_runner(crash_dir)
    async with RunnerClient(rp.socket) as c:
        sid = (await c.create(RunnerCreate())).sandbox_id
        await c.run(sid, ExecRequest(cmd="echo kept > /home/user/kept"))
        task = asyncio.create_task(c.run(sid, ExecRequest(cmd=["sleep", "30"])))
        await asyncio.sleep(0.3)
        rp.stop(signal.SIGKILL)
        with pytest.raises(HutchError):
            await task
    rp = start_runner(crash_dir)
    try:
        async with RunnerClient(rp.socket) as c:
            assert sid in {s.sandbox_id for s in await c.list()}
            r = await c.run(sid, ExecRequest(cmd=["cat", "/home/user/kept"]))
            assert r.stdout == "kept\n"  # the same sandbox, with its files
            assert await _adopted_or_clean(c, rp, sid) == "adopted"
    finally:
        rp.stop()


async def test_sigkill_during_kill_finishes_the_kill(crash_dir: Path) -> None:
    outcomes = []
    for delay in (0.0, 0.001, 0.005, 0.02):
        rp = start_runner(crash_dir)
        async with RunnerClient(rp.socket) as c:
            sid = (await c.create(RunnerCreate())).sandbox_id
            await c.start(sid, ExecRequest(cmd="sleep 100 & sleep 100"))
            task = asyncio.create_task(c.kill(sid))
            await asyncio.sleep(delay)
            rp.stop(signal.SIGKILL)
            try:
                await task
                killed = True
            except HutchError:
                killed = False
        rp = start_runner(crash_dir)
        try:
            async with RunnerClient(rp.socket) as c:
                outcome = await _adopted_or_clean(c, rp, sid)
        finally:
            rp.stop()
        assert outcome == "clean" or not killed  # an answered kill is never undone
        outcomes.append(outcome)
    assert outcomes


async def test_a_runner_stopping_empty_removes_its_parent_cgroups(crash_dir: Path) -> None:
    """A runner that stops with a sandbox left keeps its parent cgroups (its next start adopts
    the sandbox); one that stops with none removes them, so runners on short-lived data dirs
    leave nothing on the host."""
    parent = RunnerSettings(data_dir=crash_dir.resolve()).cgroup_parent()
    cgroups = Cgroups(parent)
    dirs = [
        root / parent
        for root in ([cgroups.v2] if cgroups.v2 else list(dict.fromkeys(cgroups.v1.values())))
    ]
    rp = start_runner(crash_dir)
    async with RunnerClient(rp.socket) as c:
        sid = (await c.create(RunnerCreate(timeout_s=120))).sandbox_id
    rp.stop()
    assert all(d.is_dir() for d in dirs), "a live sandbox keeps its parent"
    rp = start_runner(crash_dir)
    try:
        async with RunnerClient(rp.socket) as c:
            assert await _adopted_or_clean(c, rp, sid) == "adopted"
    finally:
        rp.stop()
    assert [d for d in dirs if d.exists()] == []
