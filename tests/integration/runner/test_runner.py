"""The runner protocol against real sandboxes: create, exec, processes, PTY, files, limits."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.models import (
    ErrorCode,
    ExecRequest,
    ExecUser,
    HutchError,
    MakeDir,
    PtySize,
    Rename,
    RunnerCreate,
    SetTimeout,
    SignalRequest,
    StdinRequest,
    Stream,
)
from hutch.runner.client import RunnerClient
from hutch.runtime.namespace.cgroups import FAVOR_HIERARCHY
from hutch.runtime.namespace.runtime import _loop_devices_of
from tests.integration.runner.conftest import RunnerProc
from tests.integration.runner.hostscan import leftovers

pytestmark = [pytest.mark.root, pytest.mark.anyio]


@pytest.fixture
async def client(runner: RunnerProc) -> AsyncIterator[RunnerClient]:
    async with RunnerClient(runner.socket) as c:
        yield c


@pytest.fixture
async def sbx(client: RunnerClient) -> AsyncIterator[str]:
    info = await client.create(RunnerCreate(timeout_s=120, env={"SBX_VAR": "from-create"}))
    yield info.sandbox_id
    with contextlib.suppress(HutchError):
        await client.kill(info.sandbox_id)


async def run(
    c: RunnerClient, sid: str, cmd: list[str] | str, **kw: object
) -> tuple[int, str, str]:
    r = await c.run(sid, ExecRequest(cmd=cmd, **kw))  # type: ignore[arg-type]
    return r.exit_code, r.stdout, r.stderr


async def test_exec_reports_output_exit_code_and_identity(client: RunnerClient, sbx: str) -> None:
    code, out, err = await run(client, sbx, "echo out; echo err >&2; exit 7")
    assert (code, out, err) == (7, "out\n", "err\n")
    code, out, _ = await run(client, sbx, ["id", "-u"])
    assert (code, out) == (0, "1000\n")
    _, out, _ = await run(client, sbx, ["id", "-u"], user="root")
    assert out == "0\n"
    _, out, _ = await run(client, sbx, ["hostname"])
    assert out.strip() == sbx
    _, out, _ = await run(client, sbx, ["pwd"])
    assert out == "/home/user\n"


async def test_env_cwd_and_stdin(client: RunnerClient, sbx: str) -> None:
    _, out, _ = await run(
        client,
        sbx,
        'echo "$SBX_VAR $CMD_VAR"; pwd; cat',
        env={"CMD_VAR": "x y"},
        cwd="/tmp",
        stdin="piped\n",
    )
    assert out == "from-create x y\n/tmp\npiped\n"


async def test_signal_and_command_not_found(client: RunnerClient, sbx: str) -> None:
    r = await client.run(sbx, ExecRequest(cmd="kill -9 $$"))
    assert (r.exit_code, r.signal) == (137, 9)
    with pytest.raises(HutchError) as e:
        await client.run(sbx, ExecRequest(cmd=["/no/such/binary"]))
    assert e.value.code == ErrorCode.exec_failed and "No such file" in e.value.detail
    with pytest.raises(HutchError) as e:
        await client.run(sbx, ExecRequest(cmd=["true"], cwd="/no/such/dir"))
    assert e.value.code == ErrorCode.exec_failed and "/no/such/dir" in e.value.detail


async def test_exec_timeout_kills_the_command_and_its_children(
    client: RunnerClient, sbx: str
) -> None:
    t0 = time.monotonic()
    r = await client.run(sbx, ExecRequest(cmd="sleep 60 & sleep 60", timeout_s=0.5))
    assert r.timed_out and r.exit_code == 137
    assert time.monotonic() - t0 < 10
    _, out, _ = await run(client, sbx, "pgrep -c sleep || true")
    assert out.strip() == "0"


async def test_background_process_stdin_wait_and_reattach(client: RunnerClient, sbx: str) -> None:
    p = await client.start(sbx, ExecRequest(cmd="read line; echo got:$line; sleep 0.2; echo done"))
    assert p.running
    assert any(q.pid == p.pid for q in await client.processes(sbx))
    await client.stdin(sbx, p.pid, StdinRequest(data="hello\n"))
    res = await client.wait(sbx, p.pid)
    assert res.exit_code == 0 and res.stdout == "got:hello\ndone\n"
    # reconnecting replays what the process printed, then its exit
    async with client.exec_stream(sbx) as ws:
        await ws.send(json.dumps({"type": "attach", "pid": p.pid}))
        frames = [m async for m in ws]
    assert json.loads(frames[0])["type"] == "started"
    out = b"".join(m[1:] for m in frames if isinstance(m, bytes) and m[0] == Stream.stdout)
    assert out == b"got:hello\ndone\n"
    assert json.loads(frames[-1]) == {
        "type": "exit",
        "exit_code": 0,
        "signal": None,
        "timed_out": False,
    }


async def test_stream_delivers_output_while_the_command_runs(
    client: RunnerClient, sbx: str
) -> None:
    req = ExecRequest(cmd="echo first; sleep 1; echo second")
    async with client.exec_stream(sbx) as ws:
        await ws.send(json.dumps({"type": "start", "request": req.model_dump(mode="json")}))
        assert json.loads(await ws.recv())["type"] == "started"
        first = await ws.recv()
        # "second" is printed a second later, so a chunk of only "first" was sent while the
        # command was still running
        assert first == bytes([Stream.stdout]) + b"first\n"
        rest = [m async for m in ws]
    assert bytes([Stream.stdout]) + b"second\n" in rest
    assert json.loads(rest[-1])["exit_code"] == 0


async def test_pty_is_a_terminal_and_resizes(client: RunnerClient, sbx: str) -> None:
    req = ExecRequest(cmd=["bash", "--norc", "-i"], pty=PtySize(cols=100, rows=30))
    async with client.exec_stream(sbx) as ws:
        await ws.send(json.dumps({"type": "start", "request": req.model_dump(mode="json")}))
        assert json.loads(await ws.recv())["type"] == "started"
        await ws.send(bytes([Stream.pty]) + b"tty; stty size\n")
        out = b""
        while b"30 100" not in out:
            m = await asyncio.wait_for(ws.recv(), 10)
            out += m[1:] if isinstance(m, bytes) else b""
        await ws.send(json.dumps({"type": "resize", "cols": 132, "rows": 40}))
        await ws.send(bytes([Stream.pty]) + b"stty size; exit 3\n")
        async for m in ws:
            if isinstance(m, bytes):
                out += m[1:]
            else:
                last = json.loads(m)
    assert b"/dev/pts/0" in out
    assert b"30 100" in out and b"40 132" in out
    assert last["type"] == "exit" and last["exit_code"] == 3


async def test_signal_a_background_process(client: RunnerClient, sbx: str) -> None:
    p = await client.start(sbx, ExecRequest(cmd=["sleep", "100"]))
    await client.signal(sbx, p.pid, SignalRequest(signal=15))
    res = await client.wait(sbx, p.pid)
    assert res.signal == 15 and res.exit_code == 143
    with pytest.raises(HutchError) as e:
        await client.signal(sbx, 99999, SignalRequest(signal=9))
    assert e.value.code == ErrorCode.process_not_found


async def test_files_round_trip_and_listing(client: RunnerClient, sbx: str) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(blob), 1 << 20):
            yield blob[i : i + (1 << 20)]

    w = await client.write_file(sbx, "/home/user/data.bin", chunks())
    assert w.size == len(blob)
    assert await client.read_bytes(sbx, "/home/user/data.bin") == blob
    _, out, _ = await run(client, sbx, "sha256sum /home/user/data.bin; stat -c %u:%g data.bin")
    assert hashlib.sha256(blob).hexdigest() in out and "1000:1000" in out
    await client.mkdir(sbx, MakeDir(path="/home/user/a/b/c"))
    assert (await client.exists(sbx, "/home/user/a/b/c")).exists
    await client.write_file(sbx, "/home/user/a/b/c/f.txt", b"hello")
    names = {f.path for f in await client.list_files(sbx, "/home/user/a", depth=3)}
    assert {"/home/user/a/b", "/home/user/a/b/c", "/home/user/a/b/c/f.txt"} <= names
    st = await client.stat(sbx, "/home/user/a/b/c/f.txt")
    assert (st.size, st.type.value, st.uid) == (5, "file", 1000)
    with pytest.raises(HutchError) as e:
        await client.rename(sbx, Rename(src="/home/user/a/b/c/f.txt", dst="/home/user/data.bin"))
    assert e.value.code == ErrorCode.file_exists
    await client.rename(sbx, Rename(src="/home/user/a/b/c/f.txt", dst="/tmp/g.txt"))
    _, out, _ = await run(client, sbx, ["cat", "/tmp/g.txt"])
    assert out == "hello"
    with pytest.raises(HutchError) as e:
        await client.remove(sbx, "/home/user/a")
    assert e.value.code == ErrorCode.directory_not_empty
    await client.remove(sbx, "/home/user/a", recursive=True)
    assert not (await client.exists(sbx, "/home/user/a")).exists
    await client.write_file(sbx, "/root/owned-by-root", b"x", user=ExecUser.root)
    _, out, _ = await run(client, sbx, ["stat", "-c", "%u", "/root/owned-by-root"], user="root")
    assert out == "0\n"


async def test_file_errors_are_typed(client: RunnerClient, sbx: str) -> None:
    cases = [
        (client.read_bytes(sbx, "/nope"), ErrorCode.file_not_found),
        (client.read_bytes(sbx, "/home"), ErrorCode.is_a_directory),
        (client.read_bytes(sbx, "/../../etc/passwd"), ErrorCode.path_outside_sandbox),
        (client.read_bytes(sbx, "/proc/self/status"), ErrorCode.path_outside_sandbox),
        (client.stat(sbx, "relative/path"), ErrorCode.path_outside_sandbox),
    ]
    for coro, code in cases:
        with pytest.raises(HutchError) as e:
            await coro
        assert e.value.code == code, e.value.detail


async def test_stats_and_disk_quota_reported(client: RunnerClient) -> None:
    sb = await client.create(RunnerCreate(memory_mb=256, disk_mb=512, vcpu=2))
    try:
        await run(client, sb.sandbox_id, "head -c 20000000 /dev/urandom > /tmp/f")
        st = await client.stats(sb.sandbox_id)
        assert st.memory_limit_bytes == 256 << 20
        assert 20_000_000 <= st.disk_used_bytes < 512 << 20
        assert 400 << 20 < st.disk_limit_bytes <= 512 << 20
        assert st.cpu_time_us > 0 and st.pids >= 1
    finally:
        await client.kill(sb.sandbox_id)


async def test_bad_input_gets_typed_errors_and_leaves_nothing(
    client: RunnerClient, runner: RunnerProc
) -> None:
    before = set(os.listdir(runner.data_dir / "sandboxes"))
    with pytest.raises(HutchError) as e:
        await client.create(RunnerCreate(template="no-such-template"))
    assert e.value.code == ErrorCode.template_not_found and "base" in e.value.detail
    r = await client._http.post("/v1/sandboxes", json={"vcpu": 99})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "invalid_request" and "vcpu" in body["detail"]
    assert "16" in body["detail"]  # the allowed maximum is named
    r = await client._http.post("/v1/sandboxes", json={"isolation": "vm"})
    assert r.status_code == 422 and "namespace" in r.json()["detail"]
    assert set(os.listdir(runner.data_dir / "sandboxes")) == before
    with pytest.raises(HutchError) as e:
        await client.run("sbx_00000000000000000000000000", ExecRequest(cmd=["true"]))
    assert e.value.code == ErrorCode.sandbox_not_found


async def test_kill_leaves_nothing_and_dead_sandbox_is_typed(
    client: RunnerClient, runner: RunnerProc
) -> None:
    sb = await client.create(RunnerCreate())
    sid = sb.sandbox_id
    await client.start(sid, ExecRequest(cmd="sleep 1000 & sleep 1000"))
    await run(client, sid, "head -c 1000000 /dev/zero > /home/user/f")
    state_dir = runner.data_dir / "sandboxes" / sid
    assert leftovers(sid, state_dir)  # the scan sees a live sandbox
    await client.kill(sid)
    assert leftovers(sid, state_dir) == []
    with pytest.raises(HutchError) as e:
        await client.run(sid, ExecRequest(cmd=["true"]))
    assert e.value.code == ErrorCode.sandbox_not_running and "killed" in e.value.detail


async def test_timeout_kills_and_set_timeout_extends(
    client: RunnerClient, runner: RunnerProc
) -> None:
    a = await client.create(RunnerCreate(timeout_s=1))
    b = await client.create(RunnerCreate(timeout_s=1))
    await client.set_timeout(b.sandbox_id, SetTimeout(timeout_s=60))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = {s.sandbox_id for s in await client.list()}
        if a.sandbox_id not in ids:
            break
        await asyncio.sleep(0.1)
    ids = {s.sandbox_id for s in await client.list()}
    assert a.sandbox_id not in ids and b.sandbox_id in ids
    assert leftovers(a.sandbox_id, runner.data_dir / "sandboxes" / a.sandbox_id) == []
    with pytest.raises(HutchError) as e:
        await client.get(a.sandbox_id)
    assert "timeout" in e.value.detail
    await client.kill(b.sandbox_id)


async def test_sandboxes_are_isolated_from_each_other(client: RunnerClient) -> None:
    a = (await client.create(RunnerCreate())).sandbox_id
    b = (await client.create(RunnerCreate())).sandbox_id
    try:
        await run(client, a, "echo secret-a > /tmp/mark; echo changed >> /etc/hostname")
        code, _, _ = await run(client, b, "test -e /tmp/mark")
        assert code == 1
        _, out, _ = await run(client, b, ["cat", "/etc/hostname"])
        assert "changed" not in out
    finally:
        await client.kill(a)
        await client.kill(b)


async def test_gvisor_class_runs_its_own_kernel_with_a_disk_quota(
    client: RunnerClient, runner: RunnerProc
) -> None:
    info = await client.info()
    gv = next(i for i in info.isolation if i.isolation.value == "gvisor")
    if not gv.available:
        pytest.skip(f"gvisor unavailable here: {gv.reason}")
    sb = await client.create(RunnerCreate(isolation="gvisor", disk_mb=128))  # type: ignore[arg-type]
    sid = sb.sandbox_id
    try:
        _, out, _ = await run(client, sid, ["cat", "/proc/version"])
        with open("/proc/version") as f:
            assert out and out != f.read()  # not the host kernel
        await client.write_file(sid, "/home/user/x.txt", b"through the files API")
        _, out, _ = await run(client, sid, ["cat", "/home/user/x.txt"])
        assert out == "through the files API"
        code, _, err = await run(client, sid, "head -c 200000000 /dev/zero > /home/user/fill")
        assert code != 0 and "No space left" in err
    finally:
        await client.kill(sid)
    assert leftovers(sid, runner.data_dir / "sandboxes" / sid) == []


async def test_runner_logs_hold_no_sandbox_content(
    client: RunnerClient, runner: RunnerProc
) -> None:
    """No content in logs: a marker passed as argv, env, stdin, output and file content never
    reaches the runner's log, while the sandbox id (metadata) does."""
    marker = f"MARK{os.urandom(8).hex()}"
    sb = await client.create(RunnerCreate(env={"CREATE_ENV": marker}))
    sid = sb.sandbox_id
    try:
        r = await client.run(
            sid,
            ExecRequest(cmd=f"echo {marker}; cat; echo $E >&2", env={"E": marker}, stdin=marker),
        )
        assert marker in r.stdout and marker in r.stderr
        await client.write_file(sid, f"/home/user/{marker}", marker.encode())
        assert await client.read_bytes(sid, f"/home/user/{marker}") == marker.encode()
        with pytest.raises(HutchError):
            await client.run(sid, ExecRequest(cmd=[f"/no/{marker}"]))
    finally:
        await client.kill(sid)
    log = runner.log.read_text()
    assert sid in log
    assert marker not in log


async def test_events_report_state_and_final_usage(
    client: RunnerClient, runner: RunnerProc
) -> None:
    """The metering seam: a running sandbox is announced, and kill emits a final usage
    heartbeat covering its whole life before the stopped event."""
    events: list[object] = []

    async def collect() -> None:
        async for ev in client.events():
            events.append(ev)

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.2)  # the subscription is in place before the sandbox exists
    sb = await client.create(RunnerCreate(vcpu=2, memory_mb=512))
    await client.kill(sb.sandbox_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [e for e in events if getattr(e, "sandbox_id", None) == sb.sandbox_id]
        if any(getattr(e, "state", None) == "stopped" for e in mine):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    kinds = [(e.type, getattr(e, "state", None) or getattr(e, "final", None)) for e in mine]  # type: ignore[attr-defined]
    assert kinds[0] == ("state", "running")
    assert ("usage", True) in kinds and kinds[-1] == ("state", "stopped")
    usage = next(e for e in mine if e.type == "usage")  # type: ignore[attr-defined]
    assert (usage.vcpu, usage.memory_mb) == (2, 512)  # type: ignore[attr-defined]
    assert usage.window_start == sb.created_at  # type: ignore[attr-defined]
    assert usage.window_end >= usage.window_start  # type: ignore[attr-defined]


async def test_runner_holds_a_favordynmods_hierarchy(client: RunnerClient, tmp_path: Path) -> None:
    """While the runner runs, the kernel's cgroup moves favour dynamic changes: a sandbox joins
    its cgroups without waiting for an RCU grace period. Mounting the runner's named hierarchy
    again shows the option it was created with (a fresh hierarchy would not have it)."""
    point = tmp_path / "cg"
    point.mkdir()
    probe = subprocess.run(  # whether this kernel offers the option at all (Linux 6.0+)
        ["mount", "-t", "cgroup", "-o", "none,name=hutch-probe,favordynmods", "x", str(point)],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("this kernel has no favordynmods for named cgroup hierarchies")
    subprocess.run(["umount", str(point)], check=True)
    assert (await client.info()).cgroup_favor_dynmods is True
    subprocess.run(
        ["mount", "-t", "cgroup", "-o", f"none,name={FAVOR_HIERARCHY}", "cgroup", str(point)],
        check=True,
    )
    try:
        opts = next(
            line.split(" - ")[1].split()[2]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == str(point)
        )
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert "favordynmods" in opts.split(","), opts


def test_sandbox_state_dirs_are_spread_over_block_groups(runner: RunnerProc) -> None:
    """The runner marks its sandboxes directory as a top directory (`chattr +T`), so that
    each sandbox's files go to their own ext4 block group (see hutch.runner.fsflags)."""
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(runner.data_dir)], capture_output=True, text=True
    ).stdout.strip()
    if fs != "ext2/ext3":  # what stat calls ext4
        pytest.skip(f"the runner's data dir is on {fs}, which has no inode flags")
    attrs = subprocess.run(
        ["lsattr", "-d", str(runner.data_dir / "sandboxes")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert "T" in attrs, attrs


async def test_the_launcher_names_the_disks_loop_device(
    client: RunnerClient, runner: RunnerProc
) -> None:
    """The runner learns which loop device holds a sandbox's disk, so that a kill waits for
    that one device to detach instead of reading every loop device on the host."""
    sid = (await client.create(RunnerCreate(timeout_s=60))).sandbox_id
    state = runner.data_dir / "sandboxes" / sid
    try:
        loop = json.loads((state / "init.json").read_text())["loop"]
        backing = Path(f"/sys/block/{loop}/loop/backing_file").read_text().strip()
        assert backing == str(state / "disk.img")
        # Told the device, the wait reads that one alone: another name finds nothing.
        disk = state / "disk.img"
        assert _loop_devices_of(disk) == [loop] == _loop_devices_of(disk, loop)
        assert _loop_devices_of(disk, "loop999999") == []
    finally:
        await client.kill(sid)
    gone = Path(f"/sys/block/{loop}/loop/backing_file")
    assert not gone.exists() or gone.read_text().strip() != str(state / "disk.img")
