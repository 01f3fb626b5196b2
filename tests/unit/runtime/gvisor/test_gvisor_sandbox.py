"""A real gVisor sandbox: commands, users, files, env, exit statuses, signals, PTY, stats."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from hutch.models import ErrorCode, ExecRequest, ExecUser, HutchError, PtySize
from hutch.runtime.base import ProcessStdio, SandboxPlan
from hutch.runtime.gvisor import GVisorRuntime

from .conftest import run

pytestmark = [pytest.mark.root, pytest.mark.anyio]


async def test_echo_exit_code_and_output(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    out = await run(runtime, sandbox, ["echo", "hi"])
    assert out.status.code == 0 and out.status.signal is None
    assert out.stdout == "hi\n"
    assert out.pid > 1


async def test_users_ids_home_and_cwd(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    user = await run(runtime, sandbox, 'echo "$(id -u) $(id -g) $HOME $(pwd)"')
    assert user.stdout.split() == ["1000", "1000", "/home/user", "/home/user"], user.stderr
    root = await run(runtime, sandbox, 'echo "$(id -u) $HOME $(pwd)"', user=ExecUser.root)
    assert root.stdout.split() == ["0", "/root", "/root"], root.stderr
    cwd = await run(runtime, sandbox, ["pwd"], cwd="/tmp")
    assert cwd.stdout == "/tmp\n"


async def test_user_lacks_root_powers(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    out = await run(runtime, sandbox, "touch /etc/hutch-not-allowed")
    assert out.status.code != 0
    assert "Permission denied" in out.stderr
    assert not (runtime.root_path(sandbox) / "etc/hutch-not-allowed").exists()


async def test_file_written_inside_lands_in_host_rootfs(
    runtime: GVisorRuntime, sandbox: SandboxPlan
) -> None:
    out = await run(runtime, sandbox, "echo content-from-inside > /home/user/inside.txt")
    assert out.status.code == 0, out.stderr
    host = runtime.root_path(sandbox) / "home/user/inside.txt"
    assert host.read_text() == "content-from-inside\n"
    # Sandbox uid 1000 is host uid uid_base + 1000, as in the namespace class.
    assert host.stat().st_uid == sandbox.uid_base + 1000
    # ...and it really is in the writable layer, not in an in-memory overlay of runsc.
    assert (sandbox.state_dir / "disk/upper/home/user/inside.txt").exists()
    # /tmp too: runsc would otherwise give it a private tmpfs the host cannot see.
    await run(runtime, sandbox, "echo tmp-data > /tmp/in-tmp.txt")
    assert (runtime.root_path(sandbox) / "tmp/in-tmp.txt").read_text() == "tmp-data\n"


async def test_host_changes_are_seen_inside(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    """The files API writes beneath root_path while the sandbox runs: no stale views inside."""
    await run(runtime, sandbox, "mkdir -p /home/user/shared && echo v1 > /home/user/shared/f")
    before = await run(runtime, sandbox, "ls /home/user/shared; cat /home/user/shared/f")
    assert before.stdout == "f\nv1\n", before.stderr
    shared = runtime.root_path(sandbox) / "home/user/shared"
    (shared / "f").write_text("v2, longer\n")
    (shared / "new").write_text("written by the files API")
    os.chown(shared / "new", sandbox.uid_base + 1000, sandbox.uid_base + 1000)
    after = await run(runtime, sandbox, "ls /home/user/shared; cat /home/user/shared/f")
    assert after.stdout == "f\nnew\nv2, longer\n", after.stderr
    owner = await run(runtime, sandbox, ["stat", "-c", "%U", "/home/user/shared/new"])
    assert owner.stdout == "user\n"
    (shared / "new").unlink()
    gone = await run(runtime, sandbox, ["ls", "/home/user/shared"])
    assert gone.stdout == "f\n"


async def test_coreutils_stat_works(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    """runsc 20221219 rejects statx(AT_NO_AUTOMOUNT); the compat library makes ls/stat work."""
    out = await run(runtime, sandbox, "ls -ld /home/user && stat -c '%u %U' /home/user")
    assert out.status.code == 0, out.stderr
    assert out.stdout.split()[2] == "user"
    assert out.stdout.splitlines()[1] == "1000 user"
    # The library lives in the in-memory /dev: nothing of it in the disk layer.
    upper = sandbox.state_dir / "disk" / "upper"
    assert not [p for p in upper.rglob("*statx*")]


async def test_env_from_plan_and_request(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    out = await run(
        runtime,
        sandbox,
        'echo "$HUTCH_TEST_PLAN_ENV|$REQ_VAR|$PATH"',
        env={"REQ_VAR": "from request with spaces"},
    )
    plan_v, req_v, path = out.stdout.rstrip("\n").split("|")
    assert plan_v == "from-plan"
    assert req_v == "from request with spaces"
    assert "/usr/bin" in path


async def test_nonzero_exit_and_signal_death(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    three = await run(runtime, sandbox, "echo oops >&2; exit 3")
    assert three.status.code == 3 and three.status.signal is None
    assert three.stderr == "oops\n"
    killed = await run(runtime, sandbox, ["/bin/sh", "-c", "kill -KILL $$"])
    assert killed.status.signal == signal.SIGKILL
    segv = await run(runtime, sandbox, ["/bin/sh", "-c", "kill -SEGV $$"])
    assert segv.status.signal == signal.SIGSEGV


async def test_missing_command_is_exec_failed(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    with pytest.raises(HutchError) as exc:
        await run(runtime, sandbox, ["/no/such/binary", "--secret-arg"])
    assert exc.value.code == ErrorCode.exec_failed
    assert "--secret-arg" not in exc.value.detail
    with pytest.raises(HutchError) as exc2:
        await run(runtime, sandbox, ["true"], cwd="/no/such/dir")
    assert exc2.value.code == ErrorCode.exec_failed


async def _procs_inside(runtime: GVisorRuntime, plan: SandboxPlan) -> list[str]:
    out = await run(
        runtime,
        plan,
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done",
        user=ExecUser.root,
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


async def test_timeout_style_kill_reaches_the_group(
    runtime: GVisorRuntime, sandbox: SandboxPlan
) -> None:
    out_r, out_w = os.pipe()
    proc, waiter = await runtime.spawn(
        sandbox,
        _req("sleep 417 & sleep 418; echo not-reached"),
        ProcessStdio(stdout=out_w),
    )
    deadline = time.monotonic() + 10
    while not any("sleep 417" in p for p in await _procs_inside(runtime, sandbox)):
        assert time.monotonic() < deadline, "child never started"
    await runtime.signal(sandbox, proc.pid, signal.SIGKILL)
    status = await asyncio.wait_for(waiter.wait(), 10)
    assert status.signal == signal.SIGKILL
    left = await _procs_inside(runtime, sandbox)
    assert not any("sleep 41" in p for p in left), left
    os.set_blocking(out_r, False)
    assert os.read(out_r, 100) == b""  # every writer died: EOF, nothing printed
    os.close(out_r)


async def test_sigterm_is_reported_as_signal(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    proc, waiter = await runtime.spawn(sandbox, _req(["sleep", "300"]), ProcessStdio())
    await runtime.signal(sandbox, proc.pid, signal.SIGTERM)
    status = await asyncio.wait_for(waiter.wait(), 10)
    assert status.signal == signal.SIGTERM and status.code is None
    with pytest.raises(HutchError) as exc:
        await runtime.signal(sandbox, proc.pid, signal.SIGTERM)
    assert exc.value.code == ErrorCode.process_not_found


async def test_kernel_is_gvisor(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    inside = await run(runtime, sandbox, ["cat", "/proc/version"])
    with open("/proc/version") as f:
        host = f.read()
    assert inside.status.code == 0
    assert inside.stdout and inside.stdout != host
    dmesg = await run(runtime, sandbox, "dmesg 2>/dev/null || cat /dev/kmsg", user=ExecUser.root)
    assert "gVisor" in dmesg.stdout or "Linux version 4.4.0" in inside.stdout


async def test_only_loopback_network(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    out = await run(runtime, sandbox, ["cat", "/proc/net/dev"])
    ifaces = [line.split(":")[0].strip() for line in out.stdout.splitlines() if ":" in line]
    assert ifaces == ["lo"]


async def test_hostname_is_sandbox_id(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    out = await run(runtime, sandbox, ["cat", "/proc/sys/kernel/hostname"])
    assert out.stdout.strip() == sandbox.sandbox_id


async def _read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    deadline = loop.time() + timeout
    while needle not in buf:
        remaining = deadline - loop.time()
        assert remaining > 0, f"{needle!r} not seen in {buf!r}"
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, lambda f=fut: f.done() or f.set_result(None))  # type: ignore[misc]
        try:
            await asyncio.wait_for(fut, remaining)
        finally:
            loop.remove_reader(fd)
        try:
            buf += os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other side is gone
            break
    return buf


async def test_pty_session_with_resize(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    proc, waiter = await runtime.spawn(
        sandbox, _req(["/bin/bash", "--norc", "-i"]), ProcessStdio(pty=PtySize(cols=100, rows=30))
    )
    master = proc.pty_master
    assert master is not None
    try:
        os.write(master, b"stty size; echo $((6*7))-$(id -u)\n")
        first = await _read_until(master, b"42-1000")
        assert b"30 100" in first
        os.write(master, b"trap 'echo winch-$(stty size | tr \" \" x)' WINCH\n")
        await _read_until(master, b"\n")
        await runtime.resize(sandbox, proc.pid, PtySize(cols=132, rows=50))
        assert b"winch-50x132" in await _read_until(master, b"winch-50x132")
        os.write(master, b"exit 5\n")
        status = await asyncio.wait_for(waiter.wait(), 10)
        assert status.code == 5
    finally:
        os.close(master)


async def test_stats_and_liveness(runtime: GVisorRuntime, sandbox: SandboxPlan) -> None:
    assert await runtime.is_alive(sandbox)
    await run(runtime, sandbox, "head -c 1000000 /dev/zero > /tmp/one-mb")
    stats = await runtime.stats(sandbox)
    assert stats.sandbox_id == sandbox.sandbox_id
    assert stats.cpu_time_us > 0
    assert 0 < stats.memory_bytes <= stats.memory_limit_bytes == 512 * 1024 * 1024
    assert stats.memory_peak_bytes >= stats.memory_bytes
    assert stats.pids >= 1
    assert stats.disk_used_bytes >= 1_000_000


def _req(cmd: list[str] | str, **kw: Any) -> ExecRequest:
    return ExecRequest(cmd=cmd, **kw)
