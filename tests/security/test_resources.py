"""Resource abuse stays inside the abusing sandbox: limits hold, neighbours and the host work on.

Each test runs the abuse in one sandbox while a neighbour sandbox must keep answering `exec true`
within ~2 s, and the host must keep running processes and answering the runner's health check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from hutch.models import ExecRequest, ExecUser, SignalRequest
from hutch.runner.client import RunnerClient
from tests.security.conftest import NewSandbox, Runner, cgroup_file, sh

pytestmark = [pytest.mark.root, pytest.mark.anyio]

RESPONSIVE_S = 2.0
MiB = 1024 * 1024


async def assert_neighbour_and_host_ok(
    client: RunnerClient, neighbour: str, runner: Runner
) -> None:
    """The neighbour answers `exec true` within RESPONSIVE_S; the host runs a process and the
    runner answers its health check as quickly."""
    t = time.monotonic()
    r = await sh(client, neighbour, ["true"], timeout_s=10)
    took = time.monotonic() - t
    assert r.exit_code == 0, r
    assert took < RESPONSIVE_S, f"the neighbour took {took:.2f}s to run `true`"
    t = time.monotonic()
    subprocess.run(["true"], check=True, timeout=RESPONSIVE_S)
    await client.info()
    took = time.monotonic() - t
    assert took < RESPONSIVE_S, f"the host took {took:.2f}s to run `true` and answer health"
    assert runner.proc.poll() is None


# The first shell stays (as `sleep`) so the bomb has a process to signal.
FORK_BOMB = ":(){ :|:& };:; exec sleep 600"


async def test_fork_bomb_hits_pids_limit_and_sandbox_recovers(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: the pids cgroup (pids.max) bounds a fork bomb to its sandbox; killing the
    bomb's process group brings the sandbox back. Without pids.max the bomb would exhaust the
    host's pid space (pid_max here is 32768) and the host could not start processes."""
    bomb_sid = await new_sandbox(memory_mb=1024)
    neighbour = await new_sandbox()
    stats = await client.stats(bomb_sid)
    limit = stats.pids_limit
    assert int(cgroup_file("pids", bomb_sid, "pids.max").read_text()) == limit

    bomb = await client.start(
        bomb_sid, ExecRequest(cmd=["bash", "-c", FORK_BOMB], user=ExecUser.user, timeout_s=120)
    )
    events = cgroup_file("pids", bomb_sid, "pids.events")
    deadline = time.monotonic() + 30
    while True:
        refused = int(events.read_text().split()[1])  # "max N": forks refused by the limit
        current = int(cgroup_file("pids", bomb_sid, "pids.current").read_text())
        if refused > 0:
            break
        assert time.monotonic() < deadline, f"the bomb never hit the limit ({current} pids)"
        await anyio.sleep(0.05)
    assert current <= limit
    await assert_neighbour_and_host_ok(client, neighbour, runner)

    # The bomb's descendants share its process group: signalling it (PID 1 sends the signal to
    # the group, without needing to fork) brings the sandbox back. PID 1 competes for the one
    # vCPU with thousands of shells, so this takes seconds.
    await client.signal(bomb_sid, bomb.pid, SignalRequest(signal=9))
    deadline = time.monotonic() + 60
    while (n := (await client.stats(bomb_sid)).pids) > 1:
        assert time.monotonic() < deadline, f"{n} pids left after killing the bomb"
        await anyio.sleep(0.05)
    r = await sh(client, bomb_sid, "echo recovered", timeout_s=10)
    assert r.stdout == "recovered\n"


MEMORY_BOMB = """
import sys
chunks = []
try:
    for _ in range(1024):
        chunks.append(bytearray(1024 * 1024))  # zero-filled: every page is touched
except MemoryError:
    print("MemoryError")
    sys.exit(3)
print("allocated 1 GiB")
"""


async def test_memory_bomb_is_oom_killed_inside_only(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: the memory cgroup (memory.limit_in_bytes, no swap) stops a 1 GiB allocation
    in a 256 MiB sandbox; only the allocating process dies, PID 1 survives (oom_score_adj
    -1000), and a neighbour keeps working. Without the limit the allocation would succeed."""
    sid = await new_sandbox(memory_mb=256)
    neighbour = await new_sandbox()
    limit = int(cgroup_file("memory", sid, "memory.limit_in_bytes").read_text())
    assert limit == 256 * MiB

    bomb = await client.start(
        sid, ExecRequest(cmd=["python3", "-c", MEMORY_BOMB], user=ExecUser.user, timeout_s=60)
    )
    await assert_neighbour_and_host_ok(client, neighbour, runner)
    res = await client.wait(sid, bomb.pid)
    assert "allocated 1 GiB" not in res.stdout
    assert res.exit_code == 137 or "MemoryError" in res.stdout, res
    assert int(cgroup_file("memory", sid, "memory.max_usage_in_bytes").read_text()) <= limit

    r = await sh(client, sid, "echo alive", timeout_s=10)
    assert r.stdout == "alive\n", "PID 1 died with the memory bomb"
    await assert_neighbour_and_host_ok(client, neighbour, runner)


async def test_disk_fill_gives_enospc_inside_and_spares_the_host(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: the writable layer is a 128 MiB loop-mounted ext4 image, so filling it fails
    with ENOSPC inside and the host file system loses at most that much. Without the image the
    writes would go to the host's disk and succeed."""
    sid = await new_sandbox(disk_mb=128)
    neighbour = await new_sandbox()
    image = runner.data_dir / "sandboxes" / sid / "disk.img"
    host_free_before = shutil.disk_usage(runner.data_dir).free

    r = await sh(
        client,
        sid,
        "dd if=/dev/zero of=/home/user/fill bs=1M count=512 2>&1; echo rc=$?;"
        " fallocate -l 256M /home/user/fill2 2>&1; echo rc=$?; sync",
        user=ExecUser.user,
        timeout_s=60,
    )
    assert "No space left on device" in r.stdout, r
    assert "rc=0" not in r.stdout, r
    written = int((await sh(client, sid, "stat -c %s /home/user/fill")).stdout)
    assert written <= 128 * MiB

    allocated = os.stat(image).st_blocks * 512
    assert allocated <= 129 * MiB, f"the disk image holds {allocated} bytes"
    host_free_after = shutil.disk_usage(runner.data_dir).free
    # Other work on this machine may write too: allow slack on top of the 128 MiB image.
    assert host_free_before - host_free_after < 128 * MiB + 256 * MiB
    await assert_neighbour_and_host_ok(client, neighbour, runner)

    # The sandbox still works and gets its space back.
    r = await sh(
        client, sid, "rm /home/user/fill && echo ok > /home/user/after && cat /home/user/after"
    )
    assert r.stdout == "ok\n"


CPU_HOG = """
import multiprocessing, time
def spin():
    end = time.monotonic() + 3
    while time.monotonic() < end:
        pass
ps = [multiprocessing.Process(target=spin) for _ in range(2)]
for p in ps: p.start()
for p in ps: p.join()
"""


async def test_cpu_hog_is_held_to_its_vcpu(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: the cpu cgroup quota (cfs_quota_us = vcpu * period) holds two busy loops in
    a vcpu=1 sandbox to about one CPU. Without the quota they would use both host CPUs
    (~2 CPU-seconds per second)."""
    sid = await new_sandbox(vcpu=1)
    neighbour = await new_sandbox()
    assert int(cgroup_file("cpu", sid, "cpu.cfs_quota_us").read_text()) == 100_000

    before = (await client.stats(sid)).cpu_time_us
    t0 = time.monotonic()
    hog = await client.start(
        sid, ExecRequest(cmd=["python3", "-c", CPU_HOG], user=ExecUser.user, timeout_s=30)
    )
    await assert_neighbour_and_host_ok(client, neighbour, runner)
    res = await client.wait(sid, hog.pid)
    after = (await client.stats(sid)).cpu_time_us
    wall = time.monotonic() - t0
    assert res.exit_code == 0, res
    used_s = (after - before) / 1e6
    assert used_s >= 1.0, f"the hog used only {used_s:.2f} CPU-s: it did not run"
    assert used_s <= 1.3 * wall, f"{used_s:.2f} CPU-s in {wall:.2f}s wall: more than 1 vCPU"


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a host process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_output_flood_is_not_paid_for_by_the_host(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: a sandbox's output costs the host little when nobody reads it. `yes` in a
    background command of a vcpu=1 sandbox writes as fast as its one CPU allows; the runner (a
    host process outside every sandbox cgroup) must not spend a comparable CPU share pumping
    that output into buffers nobody reads, or a 1-vCPU sandbox effectively uses two host CPUs
    (its own, plus the runner's) and the limit in the CPU test means little."""
    sid = await new_sandbox(vcpu=1)
    neighbour = await new_sandbox()
    before = process_cpu_s(runner.proc.pid)
    t0 = time.monotonic()
    flood = await client.start(sid, ExecRequest(cmd=["yes", "x" * 1000], timeout_s=30))
    await anyio.sleep(2.5)
    await assert_neighbour_and_host_ok(client, neighbour, runner)
    used = process_cpu_s(runner.proc.pid) - before
    wall = time.monotonic() - t0
    await client.signal(sid, flood.pid, SignalRequest(signal=9))
    assert used <= 0.25 * wall, (
        f"the runner used {used:.2f} CPU-s in {wall:.2f}s pumping one sandbox's unread output"
    )
