"""The sandbox's file system is its own: host files, the shared template and host identities are
out of reach of sandbox root."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest

from hutch.models import ExecRequest, ExecUser, SignalRequest
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR
from tests.security.conftest import NewSandbox, Runner, host_pids_of_cgroup, sh

pytestmark = [pytest.mark.root, pytest.mark.anyio]

TEMPLATE_ROOTFS = SHARED_TEST_TEMPLATE_DIR / "base" / "rootfs"


def init_host_pid(sid: str) -> int:
    """Host pid of the sandbox's PID 1 (the process whose innermost pid is 1)."""
    for pid in host_pids_of_cgroup(sid):
        status = Path(f"/proc/{pid}/status").read_text()
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if nspid.split()[-1] == "1":
            return pid
    raise AssertionError(f"no PID 1 found for {sid}")


def sha256(path: Path) -> str:
    """Hash of a host file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_host_files_are_not_reachable(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner, marker: tuple[Path, str]
) -> None:
    """Protection: mount namespace + pivot_root into the overlay. A world-readable host file
    (and the runner's own socket and data directory) cannot be read, listed or found from
    inside, not even through /proc/self/root or /proc/1/root, which lead to the sandbox's own
    root. Without pivot_root, `cat` of the host path would print the secret."""
    path, secret = marker
    sid = await new_sandbox()
    inside = f"inside-{secrets.token_hex(6)}"
    r = await sh(
        client,
        sid,
        f"""
        echo {inside} > /var/tmp/{inside}
        cat {path}; cat /proc/self/root{path}; cat /proc/1/root{path}
        ls -la /var/tmp /proc/self/root/var/tmp /proc/1/root/var/tmp
        find / -xdev -name '{path.name}*'
        ls {runner.data_dir} {runner.socket}
        grep -rls -- '{secret}' /var/tmp /tmp /root /home
        echo DONE
        """,
        timeout_s=60,
    )
    out = r.stdout + r.stderr
    assert "DONE" in r.stdout, r
    assert secret not in out
    assert path.name not in r.stdout
    assert str(runner.socket) not in r.stdout
    # /proc/self/root is the sandbox's own root: it shows what was just written inside.
    listing = (await sh(client, sid, "ls /proc/self/root/var/tmp")).stdout.split()
    assert inside in listing
    # /proc/1/root is either refused (PID 1 is not dumpable) or also the sandbox's root.
    p1 = await sh(client, sid, "ls /proc/1/root/var/tmp")
    assert p1.exit_code != 0 or inside in p1.stdout.split()


async def test_template_changes_stay_in_one_sandbox(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    """Protection: the template layer is mounted read-only (idmapped) beneath a per-sandbox
    writable overlay layer. Sandbox root overwriting /usr/bin/python3 and /etc/passwd changes
    only its own upper layer: a later sandbox sees the originals and the host's template files
    keep their hashes. Without the overlay the writes would land in the shared template."""
    link = TEMPLATE_ROOTFS / "usr/bin/python3"
    py_real = link.parent / os.readlink(link) if link.is_symlink() else link  # python3.11
    passwd = TEMPLATE_ROOTFS / "etc/passwd"
    before = {p: sha256(p) for p in (py_real, passwd)}

    a = await new_sandbox()
    r = await sh(
        client,
        a,
        "printf 'pwned' > /usr/bin/python3 && echo 'evil:x:0:0::/:/bin/sh' > /etc/passwd"
        " && cat /usr/bin/python3 && echo && cat /etc/passwd",
    )
    assert r.exit_code == 0, r
    assert r.stdout == "pwned\nevil:x:0:0::/:/bin/sh\n", "sandbox A could not even change its files"

    b = await new_sandbox()
    r = await sh(client, b, "python3 -c 'print(6 * 7)' && grep -c '^evil:' /etc/passwd")
    assert r.stdout.split()[0] == "42", r
    assert r.stdout.split()[1] == "0", "sandbox B sees A's /etc/passwd"
    r = await sh(client, b, "sha256sum /usr/bin/python3 /etc/passwd")
    hashes = [line.split()[0] for line in r.stdout.splitlines()]
    assert hashes == [before[py_real], before[passwd]]
    assert {p: sha256(p) for p in before} == before, "the host template changed"


async def test_sandbox_root_is_not_host_root(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: user namespace. Sandbox uid 0 maps to a non-zero host uid (the sandbox's
    uid_base); its processes run as that uid on the host and its files belong to it. Without
    the user namespace, sandbox root would be host root (uid 0 in all three checks)."""
    sid = await new_sandbox()
    r = await sh(client, sid, "cat /proc/self/uid_map /proc/self/gid_map; id -u")
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[2] == ["0"]
    inner, base, count = (int(x) for x in rows[0])
    assert inner == 0 and base != 0 and base >= runner.uid_base and count == 65536
    assert [int(x) for x in rows[1]] == [0, base, 65536]

    proc = await client.start(sid, ExecRequest(cmd=["sleep", "300"], user=ExecUser.root))
    host_pid = next(
        p
        for p in host_pids_of_cgroup(sid)
        if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep\0")
    )
    status = Path(f"/proc/{host_pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
    assert uids == [str(base)] * 4, status
    assert gids == [str(base)] * 4, status
    cap_eff = next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1]
    # Capabilities held inside the sandbox's user namespace mean nothing on the host, and the
    # dangerous ones (CAP_SYS_ADMIN = bit 21, CAP_SYS_MODULE = 16, CAP_SYS_PTRACE = 19) are gone.
    for bit in (16, 19, 21):
        assert not int(cap_eff, 16) & (1 << bit), f"capability bit {bit} kept"

    await sh(client, sid, "touch /root/made-by-root", user=ExecUser.root)
    await sh(client, sid, "touch /home/user/made-by-user", user=ExecUser.user)
    root = Path(f"/proc/{init_host_pid(sid)}/root")
    assert os.stat(root / "root/made-by-root").st_uid == base
    assert os.stat(root / "home/user/made-by-user").st_uid == base + 1000
    await client.signal(sid, proc.pid, SignalRequest(signal=9))


async def test_pid1_command_line_does_not_disclose_the_host_layout(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: nothing the sandbox can read names host paths of the runner. PID 1 is a
    clone of the host-side launcher, so unless it rewrites its argv, `ps` inside shows the
    launcher's command line: the runner's data directory, the template directory, the cgroup
    paths and the sandbox's host uid base."""
    sid = await new_sandbox()
    r = await sh(client, sid, "tr '\\0' ' ' < /proc/1/cmdline; echo; ps -o args= -p 1")
    assert str(runner.data_dir) not in r.stdout, r.stdout
    assert str(SHARED_TEST_TEMPLATE_DIR) not in r.stdout, r.stdout
    assert "/sys/fs/cgroup" not in r.stdout, r.stdout
