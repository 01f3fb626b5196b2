"""Create/destroy of gVisor sandboxes: nothing is left behind, even after a crash."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from hutch.models import ErrorCode, ExecRequest, HutchError
from hutch.runtime.base import ProcessStdio, SandboxPlan
from hutch.runtime.gvisor import GVisorRuntime, RunscOptions, SandboxPaths, cgroups, mounts, scan
from hutch.runtime.gvisor.cleanup import runsc_processes

from .conftest import TEST_OPTIONS, make_plan, remove_state_dir, run

pytestmark = [pytest.mark.root, pytest.mark.anyio]


def _assert_nothing_left(plan: SandboxPlan) -> None:
    left = scan(plan, TEST_OPTIONS)
    assert left.empty(), left
    paths = SandboxPaths.of(plan, TEST_OPTIONS)
    # Independent of the helper: the raw host views.
    assert not runsc_processes(paths.runsc_root)
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    assert str(plan.state_dir) not in mountinfo and plan.sandbox_id not in mountinfo
    parent = TEST_OPTIONS.cgroup_parent
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{parent}/{plan.sandbox_id}"))
    assert not list(Path("/sys/fs/cgroup").glob(f"{parent}/{plan.sandbox_id}"))
    for d in paths.owned_dirs():
        assert not d.exists(), d


async def test_destroy_leaves_nothing(runtime: GVisorRuntime, fresh_plan: SandboxPlan) -> None:
    await runtime.create(fresh_plan)
    # While it runs, every kind of trace is there (so the checks below can fail).
    during = runtime.leftovers(fresh_plan)
    assert during.processes and during.mounts and during.cgroups and during.dirs
    # A background process that is still running at destroy time.
    _proc, waiter = await runtime.spawn(
        fresh_plan, ExecRequest(cmd=["sleep", "600"]), ProcessStdio()
    )
    await runtime.destroy(fresh_plan)
    _assert_nothing_left(fresh_plan)
    status = await asyncio.wait_for(waiter.wait(), 10)
    assert status.code != 0 or status.signal is not None
    assert not await runtime.is_alive(fresh_plan)
    await runtime.destroy(fresh_plan)  # idempotent
    _assert_nothing_left(fresh_plan)
    # The disk (and its loop device) is gone with the sandbox; the state dir is the runner's.
    assert not (fresh_plan.state_dir / "disk").exists()
    assert not (fresh_plan.state_dir / "disk.img").exists()
    assert fresh_plan.state_dir.is_dir()


async def test_destroy_after_crash(runtime: GVisorRuntime, fresh_plan: SandboxPlan) -> None:
    """The runner died and the sandbox's runsc processes were killed: destroy still cleans."""
    await runtime.create(fresh_plan)
    for pid in runsc_processes(SandboxPaths.of(fresh_plan, TEST_OPTIONS).runsc_root):
        os.kill(pid, signal.SIGKILL)
    # A new runtime object, as after a runner restart: it knows nothing in memory.
    fresh_runtime = GVisorRuntime(runtime.work_dir, options=runtime.options)
    assert not await fresh_runtime.is_alive(fresh_plan)
    await fresh_runtime.destroy(fresh_plan)
    _assert_nothing_left(fresh_plan)


async def test_adopted_after_restart_and_isolated_from_a_neighbour(
    runtime: GVisorRuntime, fresh_plan: SandboxPlan
) -> None:
    """Two sandboxes made concurrently see only their own files; a new runtime object (as
    after a runner restart) can drive a sandbox it did not create."""
    other = make_plan()
    try:
        await asyncio.gather(runtime.create(fresh_plan), runtime.create(other))
        await run(runtime, fresh_plan, "echo mine > /home/user/secret.txt")
        peek = await run(runtime, other, "cat /home/user/secret.txt")
        assert peek.status.code != 0 and "No such file" in peek.stderr
        restarted = GVisorRuntime(runtime.work_dir, options=runtime.options)
        assert await restarted.is_alive(fresh_plan)
        out = await run(restarted, fresh_plan, "ls -l /home/user/secret.txt")
        assert out.status.code == 0 and out.stderr == "", out.stderr
        await restarted.destroy(fresh_plan)
        assert await runtime.is_alive(other)
    finally:
        await runtime.destroy(fresh_plan)
        await runtime.destroy(other)
        remove_state_dir(other)
    _assert_nothing_left(fresh_plan)
    _assert_nothing_left(other)


async def test_destroy_half_made(runtime: GVisorRuntime, fresh_plan: SandboxPlan) -> None:
    """Only the rootfs was mounted when the runner crashed (runsc never ran)."""
    await asyncio.to_thread(runtime._prepare_rootfs, fresh_plan)
    assert mounts.mounts_under(fresh_plan.state_dir)
    await runtime.destroy(fresh_plan)
    _assert_nothing_left(fresh_plan)


async def test_destroy_of_unknown_sandbox_is_a_no_op(
    runtime: GVisorRuntime, fresh_plan: SandboxPlan
) -> None:
    await runtime.destroy(fresh_plan)
    _assert_nothing_left(fresh_plan)


async def test_failed_create_leaves_nothing(
    runtime: GVisorRuntime, fresh_plan: SandboxPlan, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-template"
    empty.mkdir()
    plan = SandboxPlan(**{**fresh_plan.__dict__, "template_layers": (empty,)})
    with pytest.raises(HutchError) as exc:
        await runtime.create(plan)  # no /bin/sh: init cannot start
    assert exc.value.code == ErrorCode.internal
    _assert_nothing_left(plan)


async def test_limits_reach_the_host_cgroup(
    runtime: GVisorRuntime, fresh_plan: SandboxPlan
) -> None:
    plan = SandboxPlan(**{**fresh_plan.__dict__, "vcpu": 2, "memory_mb": 384})
    await runtime.create(plan)
    try:
        found = {
            p.parent.parent.name: p
            for p in cgroups.existing(plan.sandbox_id, TEST_OPTIONS.cgroup_parent)
        }
        if "memory" in found:  # cgroup v1
            mem = found["memory"]
            assert int((mem / "memory.limit_in_bytes").read_text()) == 384 << 20
            assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 384 << 20
            assert int((found["cpu"] / "cpu.cfs_quota_us").read_text()) == 200_000
            assert int((found["pids"] / "pids.max").read_text()) == 4096
        else:  # cgroup v2
            (cg,) = found.values()
            assert int((cg / "memory.max").read_text()) == 384 << 20
            assert (cg / "cpu.max").read_text().split() == ["200000", "100000"]
        # The sandbox's kernel reports the limit as its memory size.
        out = await run(runtime, plan, ["head", "-1", "/proc/meminfo"])
        assert out.stdout.split()[1] == str(384 * 1024)
    finally:
        await runtime.destroy(plan)
    _assert_nothing_left(plan)


def test_health_reports_missing_binary() -> None:
    rt = GVisorRuntime(options=RunscOptions(binary=Path("/nonexistent/runsc")))
    health = rt.health()
    assert not health.available
    assert health.reason and "/nonexistent/runsc" in health.reason
    assert health.details["binary"] == "/nonexistent/runsc"


async def test_create_refuses_when_unavailable(fresh_plan: SandboxPlan) -> None:
    """No silent fallback to a weaker class: creating fails with isolation_unavailable."""
    rt = GVisorRuntime(options=RunscOptions(binary=Path("/nonexistent/runsc")))
    with pytest.raises(HutchError) as exc:
        await rt.create(fresh_plan)
    assert exc.value.code == ErrorCode.isolation_unavailable
    _assert_nothing_left(fresh_plan)


def test_health_reports_failing_self_check(tmp_path: Path) -> None:
    fake = tmp_path / "runsc"
    fake.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && echo 'runsc version 0.0~fake' && exit 0\n"
        "echo 'cannot start sandbox' >&2; exit 1\n"
    )
    fake.chmod(0o755)
    health = GVisorRuntime(options=RunscOptions(binary=fake)).health()
    assert not health.available
    assert health.reason and "self-check failed" in health.reason
    assert health.details["version"] == "0.0~fake"


def test_health_ok_with_real_runsc(runtime: GVisorRuntime) -> None:
    health = runtime.health()
    assert health.available and health.reason is None
    assert health.details["version"].startswith("0.0~")
