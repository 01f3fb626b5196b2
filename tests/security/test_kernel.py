"""Kernel surfaces sandbox root must not reach: /proc and /sys knobs, devices, the clock, the
kernel log, modules, new namespaces, mounts, BPF, and its own cgroup limits.

Every command runs as sandbox root, the strongest identity a sandbox user can get.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.models import ExecUser
from hutch.runner.client import RunnerClient
from tests.security.conftest import NewSandbox, cgroup_file, sh

pytestmark = [pytest.mark.root, pytest.mark.anyio]


@pytest.fixture
async def sid(new_sandbox: NewSandbox) -> AsyncIterator[str]:
    """One fresh sandbox (512 MiB, 1 vCPU) for the test."""
    yield await new_sandbox()


def rcs(stdout: str) -> list[int]:
    """Exit codes printed as `rc=N` lines, in order."""
    return [int(line[3:]) for line in stdout.split() if line.startswith("rc=")]


async def test_proc_kernel_memory_and_symbols_are_masked(client: RunnerClient, sid: str) -> None:
    """Protection: /proc masks (bind mounts of /dev/null). /proc/kcore (absent on this kernel,
    which is fine) yields nothing, /proc/kallsyms and /proc/timer_list are empty, and
    /proc/sysrq-trigger cannot be written. Without the masks kallsyms lists every kernel
    symbol (names readable by anyone)."""
    r = await sh(
        client,
        sid,
        "head -c 4096 /proc/kcore 2>/dev/null | wc -c; wc -c < /proc/kallsyms;"
        " cat /proc/timer_list 2>/dev/null | wc -c; cat /proc/keys 2>/dev/null | wc -c;"
        " echo h > /proc/sysrq-trigger; echo rc=$?",
    )
    kcore, kallsyms, timer_list, keys = (int(x) for x in r.stdout.split()[:4])
    assert kcore == 0
    assert kallsyms == 0, "/proc/kallsyms is readable"
    assert timer_list == 0 and keys == 0
    assert rcs(r.stdout) == [1]
    with open("/proc/kallsyms", "rb") as f:
        assert f.read(100), "the host's kallsyms is empty too: this check proves nothing here"


async def test_sysctls_cannot_be_written(client: RunnerClient, sid: str) -> None:
    """Protection: /proc/sys is remounted read-only. Sandbox root owns its network and UTS
    namespaces, so without the read-only mount it could change net.ipv4.ip_forward and
    kernel.hostname there (with CAP_NET_ADMIN / CAP_SYS_ADMIN, also dropped); host-wide ones
    such as kernel.core_pattern (the classic escape: a pipe handler run as host root) must stay
    untouched."""
    host_oops = Path("/proc/sys/kernel/panic_on_oops").read_text()
    host_core = Path("/proc/sys/kernel/core_pattern").read_text()
    r = await sh(
        client,
        sid,
        "before=$(cat /proc/sys/net/ipv4/ip_forward);"
        " echo 1 > /proc/sys/net/ipv4/ip_forward; echo rc=$?;"
        " echo hacked > /proc/sys/kernel/hostname; echo rc=$?;"
        " echo 1 > /proc/sys/kernel/panic_on_oops; echo rc=$?;"
        " echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern; echo rc=$?;"
        " sysctl -w vm.drop_caches=3 >/dev/null 2>&1; echo rc=$?;"
        " echo now=$(cat /proc/sys/net/ipv4/ip_forward) before=$before; hostname",
    )
    assert all(rc != 0 for rc in rcs(r.stdout)) and len(rcs(r.stdout)) == 5, r
    fwd = dict(t.split("=") for t in r.stdout.split() if t.startswith(("now=", "before=")))
    assert fwd["now"] == fwd["before"] == "0"
    assert "hacked" not in r.stdout
    assert Path("/proc/sys/kernel/panic_on_oops").read_text() == host_oops
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core


async def test_device_nodes_cannot_be_made_or_used(client: RunnerClient, sid: str) -> None:
    """Protection: user namespace (mknod of real devices needs host CAP_MKNOD) plus nodev
    mounts. A block node for the host's root disk and a char node for /dev/mem cannot be
    created, and no such node can be read. Without them, sandbox root could read the host's
    disk raw."""
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    r = await sh(
        client,
        sid,
        f"mknod /root/disk b {major} {minor}; echo rc=$?;"
        " mknod /tmp/mem c 1 1; echo rc=$?;"
        f" mknod /dev/shm/disk b {major} {minor}; echo rc=$?;"
        " head -c 512 /root/disk /tmp/mem /dev/shm/disk 2>/dev/null | wc -c",
    )
    assert rcs(r.stdout) == [1, 1, 1], r
    assert r.stdout.split()[-1] == "0"


async def test_clock_cannot_be_set(client: RunnerClient, sid: str) -> None:
    """Protection: seccomp (settimeofday, clock_settime, adjtimex denied) and no CAP_SYS_TIME.
    `date -s` and time.clock_settime fail and the host clock is unchanged. Without them the
    host's wall clock (shared by every sandbox) could be moved."""
    wall0, mono0 = time.time(), time.monotonic()
    r = await sh(
        client,
        sid,
        "date -s '2001-01-01 00:00:00' >/dev/null 2>&1; echo rc=$?;"
        " python3 -c 'import time; time.clock_settime(time.CLOCK_REALTIME, 1e9)'"
        " 2>/dev/null; echo rc=$?;"
        " python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True);"
        " b = bytearray(208); print(l.adjtimex(ctypes.c_char_p(bytes(b))), ctypes.get_errno())'",
    )
    assert rcs(r.stdout) == [1, 1], r
    assert r.stdout.split()[-2:] == ["-1", "1"], r  # adjtimex: EPERM even for a query
    drift = (time.time() - wall0) - (time.monotonic() - mono0)
    assert abs(drift) < 1.0, f"the host clock moved by {drift:.1f}s"


async def test_kernel_log_is_unreadable(client: RunnerClient, sid: str) -> None:
    """Protection: seccomp denies syslog(2); /dev/kmsg is absent and /proc/kmsg needs host
    CAP_SYSLOG. Without them `dmesg` would print the host kernel log."""
    r = await sh(
        client,
        sid,
        "dmesg >/dev/null 2>&1; echo rc=$?; ls /dev/kmsg 2>/dev/null; echo rc=$?;"
        " timeout 2 head -c 100 /proc/kmsg >/dev/null 2>&1; echo rc=$?;"
        " python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True);"
        " b = ctypes.create_string_buffer(4096);"
        ' print("syslog", l.klogctl(3, b, 4096), ctypes.get_errno())\'',
    )
    assert rcs(r.stdout) == [1, 2, 1], r
    assert "syslog -1 1" in r.stdout, r


MODULE_PROBE = """
import ctypes, os
l = ctypes.CDLL(None, use_errno=True)
# finit_module(fd, "", 0) on an ELF-looking file, init_module(buf, len, ""), delete_module("ext4")
fd = os.open("/bin/true", os.O_RDONLY)
for name, nr, args in (("finit_module", 313, (fd, b"", 0)),
                       ("init_module", 175, (b"\\x7fELF" + b"\\0" * 60, 64, b"")),
                       ("delete_module", 176, (b"loop", 0))):
    print(name, l.syscall(nr, *args), ctypes.get_errno())
"""


async def test_kernel_modules_cannot_be_loaded(client: RunnerClient, sid: str) -> None:
    """Protection: seccomp (init_module, finit_module, delete_module denied) and no host
    CAP_SYS_MODULE. Every module syscall fails with EPERM, and the host's module list is
    unchanged. Without both, sandbox root could run code in the host kernel."""
    before = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    r = await sh(client, sid, ["python3", "-c", MODULE_PROBE])
    assert r.stdout.split("\n")[:3] == [
        "finit_module -1 1",
        "init_module -1 1",
        "delete_module -1 1",
    ], r
    after = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    assert after == before


async def test_new_namespaces_cannot_be_created(client: RunnerClient, sid: str) -> None:
    """Protection: seccomp denies unshare(2), setns(2), clone3 and clone with namespace flags.
    Without it, sandbox root could create a nested user namespace and gain a full capability
    set there (the usual first step of kernel exploits)."""
    r = await sh(
        client,
        sid,
        "for f in -U -m -n -p -i -u -C -r; do unshare $f --fork true 2>/dev/null; echo rc=$?; done;"
        " python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True);"
        ' print("unshare", l.unshare(0x10000000), ctypes.get_errno())\'',
        user=ExecUser.user,
    )
    assert rcs(r.stdout) == [1] * 8, r
    assert "unshare -1 1" in r.stdout
    r = await sh(client, sid, "unshare -U -m -n --fork true; echo rc=$?")
    assert rcs(r.stdout) == [1], r


async def test_mount_fails(client: RunnerClient, sid: str) -> None:
    """Protection: seccomp denies mount(2) and the new mount API; CAP_SYS_ADMIN is dropped.
    tmpfs, proc, a bind of / and a remount of / read-write all fail and nothing new is
    mounted. Without them, sandbox root (which owns its mount namespace) could mount."""
    before = (await sh(client, sid, "cat /proc/self/mountinfo")).stdout
    r = await sh(
        client,
        sid,
        "mkdir -p /mnt/x; mount -t tmpfs none /mnt/x; echo rc=$?;"
        " mount -t proc proc /mnt/x; echo rc=$?; mount --bind / /mnt/x; echo rc=$?;"
        " mount -o remount,rw /proc/sys; echo rc=$?; umount /proc/kallsyms; echo rc=$?",
    )
    assert all(rc != 0 for rc in rcs(r.stdout)) and len(rcs(r.stdout)) == 5, r
    assert (await sh(client, sid, "cat /proc/self/mountinfo")).stdout == before


BPF_PROBE = """
import ctypes
l = ctypes.CDLL(None, use_errno=True)
attr = (ctypes.c_uint32 * 32)()
attr[0], attr[1], attr[2], attr[3] = 2, 4, 4, 1  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
print("bpf", l.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr)), ctypes.get_errno())
print("perf", l.syscall(298, None, 0, -1, -1, 0), ctypes.get_errno())
print("io_uring", l.syscall(425, 1, None), ctypes.get_errno())
"""


async def test_bpf_and_other_kernel_attack_surface_fail(client: RunnerClient, sid: str) -> None:
    """Protection: seccomp denies bpf, perf_event_open and io_uring_setup with EPERM (the kernel
    alone would answer EFAULT/EINVAL for these arguments, which is how a missing filter shows)."""
    r = await sh(client, sid, ["python3", "-c", BPF_PROBE])
    assert r.stdout.split("\n")[:3] == ["bpf -1 1", "perf -1 1", "io_uring -1 1"], r


async def test_cgroup_limits_cannot_be_raised(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    """Protection: cgroup namespace + read-only /sys with no cgroupfs mounted + mount denied.
    Sandbox root cannot reach or mount any cgroup file to raise its memory, CPU or pids limit,
    and the host's values stay as the runner set them. Without these, writing
    memory.limit_in_bytes from inside would lift the limit."""
    sid = await new_sandbox(memory_mb=256, vcpu=1)
    host_files = {
        cgroup_file("memory", sid, "memory.limit_in_bytes"): str(256 * 1024 * 1024),
        cgroup_file("cpu", sid, "cpu.cfs_quota_us"): "100000",
        cgroup_file("pids", sid, "pids.max"): "4096",
    }
    assert {p: p.read_text().strip() for p in host_files} == host_files
    r = await sh(
        client,
        sid,
        "ls -A /sys/fs/cgroup | wc -l;"
        " echo paths=$(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\\n' ,);"
        " for f in memory/memory.limit_in_bytes memory/hutch/$HOSTNAME/memory.limit_in_bytes"
        " cpu/cpu.cfs_quota_us pids/pids.max memory.max; do"
        "  echo 999999999999 > /sys/fs/cgroup/$f; echo rc=$?; done;"
        " mkdir /sys/fs/cgroup/escape; echo rc=$?;"
        " mkdir -p /tmp/cg; mount -t cgroup -o memory none /tmp/cg; echo rc=$?;"
        " mount -t cgroup2 none /tmp/cg; echo rc=$?; ls /tmp/cg | wc -l",
    )
    out = r.stdout.split()
    assert out[0] == "0", "cgroup files are visible in the sandbox"
    assert out[1] == "paths=/,", f"the sandbox sees its host cgroup paths: {out[1]}"
    assert all(rc != 0 for rc in rcs(r.stdout)) and len(rcs(r.stdout)) == 8, r
    assert out[-1] == "0"
    assert {p: p.read_text().strip() for p in host_files} == host_files
