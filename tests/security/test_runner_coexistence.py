"""Runners on one host must not destroy each other's sandboxes."""

from __future__ import annotations

import anyio
import pytest

from hutch.runner.client import RunnerClient
from tests.security.conftest import (
    UID_BASE,
    NewSandbox,
    cgroup_dir,
    host_pids_of_cgroup,
    sh,
    start_runner,
    stop_runner,
)

pytestmark = [pytest.mark.root, pytest.mark.anyio]


async def test_second_runner_leaves_other_sandboxes_alone(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    """Protection: a runner's start-up reconciliation only cleans up what belongs to it. Every
    runner keeps its sandboxes' cgroups under the host-wide `hutch` parent, and reconcile
    removes (killing every process in) each cgroup there that is not one of its own sandboxes;
    so starting a second runner on the host (another data directory: tests, a dev instance)
    kills every sandbox of the first one. Here the sandbox must still run commands and keep
    its processes after another runner started."""
    sid = await new_sandbox()
    assert (await sh(client, sid, "echo before")).stdout == "before\n"
    pids = host_pids_of_cgroup(sid)
    cgroup = cgroup_dir("pids", sid)
    other = await anyio.to_thread.run_sync(start_runner, UID_BASE + 65536 * 1024)
    try:
        assert cgroup.exists(), "the other runner removed this sandbox's cgroup, killing it"
        assert host_pids_of_cgroup(sid) == pids, "the other runner killed this sandbox's processes"
        assert (await sh(client, sid, "echo after")).stdout == "after\n"
    finally:
        await anyio.to_thread.run_sync(stop_runner, other)
