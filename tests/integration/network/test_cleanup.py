"""Nothing of a sandbox's network outlives it: not after kill, not after a runner crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.ids import new_id
from hutch.models import ErrorCode, HutchError, NetworkPolicy, RunnerCreate
from hutch.runner.client import RunnerClient
from tests.integration.network.conftest import (
    UID_BASE,
    WEB,
    NetRunner,
    World,
    curl,
    start_net_runner,
    stop_net_runner,
)
from tests.integration.runner.hostscan import leftovers, network_leftovers

pytestmark = [pytest.mark.root, pytest.mark.anyio]
POLICY = NetworkPolicy(allow_domains=["ok.test"], allow_cidrs=["198.18.1.2/32"])


def net_left(r: NetRunner) -> list[str]:
    """This runner's sandbox links and per-sandbox rules in its namespace."""
    tag = r.settings.network_tag()
    return network_leftovers(r.world.host, f"hx{tag}", f"hutch_{tag}")


def listeners(r: NetRunner) -> str:
    """The runner process's listening sockets."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{r.world.host}", "ss", "-Hltunp"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return "\n".join(ln for ln in out.splitlines() if f"pid={r.proc.pid}," in ln)


async def test_nothing_left_after_kill(client: RunnerClient, net_runner: NetRunner) -> None:
    before = listeners(net_runner)
    info = await client.create(RunnerCreate(network=POLICY, timeout_s=600))
    sid = info.sandbox_id
    assert (await curl(client, sid, "http://ok.test/"))[0] == 0
    assert net_left(net_runner) != []  # the scan sees a live sandbox's link and rules
    assert listeners(net_runner) != before  # and its resolver and proxy
    await client.kill(sid)
    assert leftovers(sid, net_runner.data_dir / "sandboxes" / sid) == []
    assert net_left(net_runner) == []
    assert listeners(net_runner) == before


@pytest.fixture
def crash_dir(world: World) -> Iterator[tuple[World, Path]]:
    """A data dir for a runner of one test."""
    d = Path(f"/var/tmp/hutch-netcrash-{secrets.token_hex(6)}")
    d.mkdir(mode=0o711)
    try:
        yield world, d / "runner"
    finally:
        shutil.rmtree(d, ignore_errors=True)


UID_CRASH = UID_BASE + 65536 * 300
POOL = "10.201.0.0/16"  # the session runner shares the namespace


def start(world: World, d: Path) -> NetRunner:
    """(Re)start the test's own runner."""
    return start_net_runner(world, d, UID_CRASH, POOL)


async def test_runner_crash_adopts_network(
    crash_dir: tuple[World, Path],
) -> None:
    world, d = crash_dir
    r = start(world, d)
    try:
        async with r.client() as c:
            sid = (await c.create(RunnerCreate(network=POLICY, timeout_s=600))).sandbox_id
            assert (await curl(c, sid, "http://ok.test/bytes/100000", "-o", "/dev/null"))[0] == 0
            before = await c.stats(sid)
            assert before.net_rx_bytes > 100_000
        r.proc.send_signal(signal.SIGKILL)
        r.proc.wait(timeout=15)
        r = start(world, d)
        async with r.client() as c:
            assert (await c.stats(sid)).net_rx_bytes >= before.net_rx_bytes  # counts carried over
            # resolver and proxy are back for the adopted sandbox
            code, body = await curl(c, sid, "http://ok.test/")
            assert (code, body) == (0, f"hello host=ok.test addr={WEB}\n")
            await c.kill(sid)
        assert leftovers(sid, d / "sandboxes" / sid) == []
        assert net_left(r) == []
    finally:
        stop_net_runner(r)


async def test_runner_crash_then_sandbox_lost_is_cleaned(
    crash_dir: tuple[World, Path],
) -> None:
    world, d = crash_dir
    r = start(world, d)
    try:
        async with r.client() as c:
            sid = (await c.create(RunnerCreate(network=POLICY, timeout_s=600))).sandbox_id
        r.proc.send_signal(signal.SIGKILL)
        r.proc.wait(timeout=15)
        init = json.loads((d / "sandboxes" / sid / "init.json").read_text())
        os.kill(init["pid"], signal.SIGKILL)
        r = start(world, d)
        async with r.client() as c:
            with pytest.raises(HutchError) as e:
                await c.get(sid)
            assert e.value.code in (ErrorCode.sandbox_not_found, ErrorCode.sandbox_not_running)
        assert leftovers(sid, d / "sandboxes" / sid) == []
        assert net_left(r) == []
    finally:
        stop_net_runner(r)


@pytest.mark.slow
async def test_runner_crash_during_create_with_policy(
    crash_dir: tuple[World, Path],
) -> None:
    world, d = crash_dir
    outcomes = set()
    for delay in (0.0, 0.05, 0.1, 0.2, 0.4):
        r = start(world, d)
        sid = new_id("sbx")
        async with r.client() as c:
            task = asyncio.create_task(
                c.create(RunnerCreate(sandbox_id=sid, network=POLICY, timeout_s=600))
            )
            await asyncio.sleep(delay)
            r.proc.send_signal(signal.SIGKILL)
            r.proc.wait(timeout=15)
            with contextlib.suppress(HutchError):
                await task
        r = start(world, d)
        try:
            async with r.client() as c:
                try:
                    await c.get(sid)
                except HutchError:
                    outcomes.add("clean")
                    assert leftovers(sid, d / "sandboxes" / sid) == []
                    assert net_left(r) == []
                else:
                    outcomes.add("adopted")
                    await c.kill(sid)
                    assert net_left(r) == []
        finally:
            stop_net_runner(r)
    assert outcomes  # each crash point ended adopted or clean, never half-made
