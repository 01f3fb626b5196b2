"""Processes: a sandbox sees and signals only its own, never the host's or a neighbour's."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from hutch.models import ExecRequest, ExecUser, SignalRequest
from hutch.runner.client import RunnerClient
from tests.security.conftest import NewSandbox, Runner, sh

pytestmark = [pytest.mark.root, pytest.mark.anyio]


@pytest.fixture
def host_victim(runner: Runner) -> Iterator[subprocess.Popen[bytes]]:
    """A host process running as the very host uid sandbox root of slot 0 maps to, so only the
    pid namespace (not uid checks) keeps a sandbox from signalling it."""
    uid = runner.uid_base
    proc = subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[])
    yield proc
    proc.kill()
    proc.wait()


async def test_sandbox_sees_and_signals_only_its_own_processes(
    client: RunnerClient,
    new_sandbox: NewSandbox,
    runner: Runner,
    host_victim: subprocess.Popen[bytes],
) -> None:
    """Protection: pid namespace. `ps` inside lists only the sandbox's processes; the runner's
    host pid and a host process owned by the sandbox's own host uid cannot be signalled;
    `kill -9 -1` and `kill -9 1` as sandbox root leave the host, the runner and PID 1 alive.
    Without the pid namespace, `kill -9 -1` as the sandbox's host uid would kill the victim."""
    sid = await new_sandbox()
    r = await sh(client, sid, "ps -eo pid=,comm=")
    rows = [line.split(None, 1) for line in r.stdout.strip().splitlines()]
    pids = {int(p) for p, _ in rows}
    assert len(rows) <= 4 and max(pids) < 1000, r.stdout
    comms = " ".join(c for _, c in rows)
    assert "sleep" not in comms and "python" not in comms, r.stdout

    bg = await client.start(sid, ExecRequest(cmd=["sleep", "300"], user=ExecUser.user))
    for target in (runner.proc.pid, host_victim.pid, os.getpid(), 1):
        await sh(client, sid, f"kill -9 {target}; true")
    r = await sh(client, sid, "kill -9 -1; echo done")
    # `kill -1` reaches every process of the sandbox but PID 1 and the caller: the background
    # sleep dies, so the signal really was sent.
    assert (await client.wait(sid, bg.pid)).signal == 9
    assert runner.proc.poll() is None, "the runner died"
    assert host_victim.poll() is None, "a host process was killed from inside a sandbox"
    assert (await client.info()).sandboxes >= 1
    r = await sh(client, sid, "echo alive")
    assert r.stdout == "alive\n", "PID 1 of the sandbox died"


async def test_neighbour_processes_files_and_ipc_are_invisible(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    """Protection: pid, mount, ipc and net namespaces per sandbox. Sandbox B cannot see A's
    processes, files, SysV shared memory, TCP listener or abstract unix socket, and cannot
    signal A's processes. Without them, B would find the marker in its `ps`, ipcs and netstat
    views and could connect to A's services."""
    tag = secrets.token_hex(8)
    a = await new_sandbox()
    b = await new_sandbox()
    port = 20000 + secrets.randbelow(20000)
    await sh(client, a, f"echo secret-{tag} > /root/secret-{tag} && ipcmk -M 4096 -p 0666")
    sleeper = await client.start(
        a, ExecRequest(cmd=["bash", "-c", f"exec -a marker-{tag} sleep 300"])
    )
    server = await client.start(
        a,
        ExecRequest(
            cmd=[
                "python3",
                "-c",
                "import socket, time\n"
                f"t = socket.create_server(('127.0.0.1', {port}))\n"
                "u = socket.socket(socket.AF_UNIX)\n"
                f"u.bind('\\0hutch-{tag}'); u.listen()\n"
                "print('up', flush=True)\n"
                "time.sleep(300)\n",
            ]
        ),
    )
    r = await sh(
        client,
        a,
        f"for i in $(seq 100); do ss -lnt | grep -q :{port} && break; sleep 0.05; done;"
        " ps -eo args; ipcs -m",
    )
    assert f"marker-{tag}" in r.stdout, "the marker process is not even visible in A"
    a_shm = r.stdout.split("Shared Memory Segments")[1]
    assert "0x" in a_shm and "666" in a_shm, r.stdout

    # The tag reaches B only through the environment, so B's own command line (which `ps`
    # shows) does not contain it.
    probe = """
import os, socket
tag = os.environ["TAG"]
for fam, addr in ((socket.AF_INET, ("127.0.0.1", int(os.environ["PORT"]))),
                  (socket.AF_UNIX, "\\0hutch-" + tag)):
    s = socket.socket(fam)
    s.settimeout(2)
    try:
        s.connect(addr)
        print("CONNECTED", addr)
    except OSError as e:
        print("refused", type(e).__name__)
"""
    r = await sh(
        client,
        b,
        f"""
        ps -eo args; ipcs -m; ss -lnxp; ss -lnt
        find / -xdev -name "secret-$TAG*"; cat /root/secret-$TAG
        python3 -c '{probe}'
        pkill -9 -f "marker-$TAG"; echo DONE
        """,
        env={"TAG": tag, "PORT": str(port)},
        timeout_s=30,
    )
    assert "DONE" in r.stdout, r
    assert tag not in r.stdout, r.stdout
    lines = r.stdout.splitlines()
    assert not [line for line in lines if line.startswith("CONNECTED")], r.stdout
    assert len([line for line in lines if line.startswith("refused")]) == 2, r.stdout
    b_shm = r.stdout.split("Shared Memory Segments")[1].split("\n\n")[0]
    assert "666" not in b_shm, r.stdout

    # A's processes survived B's pkill.
    procs = {p.pid: p for p in await client.processes(a)}
    assert procs[sleeper.pid].running and procs[server.pid].running
    await client.signal(a, sleeper.pid, SignalRequest(signal=9))
    await client.signal(a, server.pid, SignalRequest(signal=9))


PTRACE_PROBE = """
import ctypes, os
l = ctypes.CDLL(None, use_errno=True)
print("attach", l.ptrace(16, 1, None, None), ctypes.get_errno())  # PTRACE_ATTACH to PID 1
for name in ("environ", "mem", "root/", "fd/"):
    try:
        if name.endswith("/"):
            os.listdir("/proc/1/" + name)
        else:
            open("/proc/1/" + name, "rb").read(1)
        print(name, "OPEN")
    except OSError as e:
        print(name, e.errno)
"""


async def test_pid1_cannot_be_traced_or_inspected(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    """Protection: PID 1 (which holds the control socket the runner trusts) is not dumpable and
    belongs to the host's user namespace's memory; sandbox root can neither ptrace it nor open
    its memory, environment, root or file descriptors. Without that, sandbox root could inject
    code into PID 1 and forge its replies to the runner."""
    sid = await new_sandbox()
    r = await sh(client, sid, ["python3", "-c", PTRACE_PROBE])
    lines = r.stdout.splitlines()
    assert lines[0] == "attach -1 1", r
    assert not [line for line in lines[1:] if line.endswith("OPEN")], r
    assert (await sh(client, sid, "echo alive")).stdout == "alive\n"
