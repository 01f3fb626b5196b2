"""The `namespace` isolation class: Linux namespaces + idmapped overlay + seccomp + cgroups."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hutch.models import ErrorCode, ExecRequest, HutchError, IsolationClass, PtySize, SandboxStats
from hutch.models.common import DEFAULT_DISK_MB, SANDBOX_USER_HOME, SANDBOX_USER_UID, ExecUser
from hutch.runtime.base import (
    ExitStatus,
    ExitWaiter,
    ProcessStdio,
    Runtime,
    RuntimeHealth,
    SandboxPlan,
    SpawnedProcess,
)
from hutch.runtime.namespace.build import ensure_binary
from hutch.runtime.namespace.cgroups import Cgroups, Limits
from hutch.runtime.namespace.disk import DiskImages
from hutch.runtime.namespace.initproto import InitConnection, InitError
from hutch.runtime.namespace.netns import connect_in_netns

PIDS_LIMIT = 4096
READY_DISKS = 4  # copies of the default-size disk made ahead of creates (see DiskImages)
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks (tells a pid apart from a later reuse)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


@dataclass
class _Live:
    init_pid: int
    start: int | None  # start time: a reused pid is never taken for this sandbox's PID 1
    conn: InitConnection
    loop: str | None = None  # the disk's loop device (`loop7`), known since the launcher said


class _Waiter(ExitWaiter):
    def __init__(self, conn: InitConnection, pid: int) -> None:
        self.conn, self.pid = conn, pid

    async def wait(self) -> ExitStatus:
        return await self.conn.wait(self.pid)


class NamespaceRuntime(Runtime):
    """Sandboxes as namespaces on this host, each with PID 1 = the hutch-sandbox init."""

    isolation = IsolationClass.namespace
    supports_network = True

    def __init__(
        self, work_dir: Path, *, seccomp: bool = True, cgroup_parent: str = "hutch"
    ) -> None:
        self.work_dir = work_dir
        self.seccomp = seccomp
        self.cgroup_parent = cgroup_parent
        self._cgroups: Cgroups | None = None
        self._binary: Path | None = None
        self._disks = DiskImages(work_dir / "disks", ready={DEFAULT_DISK_MB: READY_DISKS})
        self._live: dict[str, _Live] = {}
        self._health: RuntimeHealth | None = None

    # ------------------------------------------------------------------ setup

    @property
    def cgroups(self) -> Cgroups:
        """The host's cgroup hierarchy (found on first use)."""
        if self._cgroups is None:
            self._cgroups = Cgroups(self.cgroup_parent)
        return self._cgroups

    def health(self) -> RuntimeHealth:
        """Check the kernel and build the launcher; cached after the first call."""
        if self._health is None:
            try:
                if os.geteuid() != 0:
                    raise RuntimeError("the runner must run as root to create namespaces")
                _ = self.cgroups
                self._binary = ensure_binary(self.work_dir / "bin")
                if shutil.which("mkfs.ext4") is None:
                    raise RuntimeError("mkfs.ext4 is missing (Debian package e2fsprogs)")
                self._health = RuntimeHealth(
                    True, details={"cgroup_version": str(self.cgroups.version)}
                )
            except (RuntimeError, OSError, HutchError) as e:
                self._health = RuntimeHealth(False, reason=str(e))
        return self._health

    def release(self) -> None:
        """Remove this runner's parent cgroups when the runner stops with none left under them
        (each runner has its own, named after its data dir: test and bench runners would
        otherwise leave one per data dir on the host)."""
        if self._cgroups is not None:
            self._cgroups.remove_parent()

    def _require(self) -> Path:
        h = self.health()
        if not h.available or self._binary is None:
            raise HutchError(
                ErrorCode.isolation_unavailable,
                f"the namespace isolation class is unavailable on this runner: {h.reason}",
            )
        return self._binary

    # ------------------------------------------------------------------ life cycle

    async def create(self, plan: SandboxPlan) -> None:
        """Build the disk, cgroups and namespaces; return once PID 1 answers."""
        binary = self._require()
        try:
            await asyncio.to_thread(self._disks.clone, plan.disk_mb, plan.state_dir / "disk.img")
            procs = self.cgroups.create(
                plan.sandbox_id,
                Limits(plan.vcpu, plan.memory_mb * 1024 * 1024, PIDS_LIMIT),
            )
            args = [
                str(binary),
                "--id",
                plan.sandbox_id,
                "--uid-base",
                str(plan.uid_base),
                "--state-dir",
                str(plan.state_dir),
                "--disk",
                str(plan.state_dir / "disk.img"),
                "--seccomp",
                "1" if self.seccomp else "0",
            ]
            for layer in plan.template_layers:
                args += ["--lower", str(layer)]
            for p in procs:
                args += ["--cgroup-procs", str(p)]
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={},
            )
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise HutchError(
                    ErrorCode.internal,
                    f"the sandbox could not be started: {err.decode(errors='replace').strip()}",
                )
            said = out.decode(errors="replace").split()
            init_pid, loop = int(said[0]), _loop_name(said[1:])
            start = proc_start_time(init_pid)
            (plan.state_dir / "init.json").write_text(
                json.dumps({"pid": init_pid, "start": start, "loop": loop})
            )
            conn = InitConnection(str(plan.state_dir / "ctl.sock"))
            await conn.connect()
            self._live[plan.sandbox_id] = _Live(init_pid, start, conn, loop)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(plan)
            raise

    def _init_record(self, plan: SandboxPlan) -> dict[str, Any]:
        try:
            rec = json.loads((plan.state_dir / "init.json").read_text())
        except (OSError, ValueError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def _init_pid(self, plan: SandboxPlan) -> int | None:
        """PID 1's host pid, if that process still is this sandbox's init."""
        live = self._live.get(plan.sandbox_id)
        if live is not None:
            return live.init_pid if proc_start_time(live.init_pid) == live.start else None
        rec = self._init_record(plan)
        if "pid" not in rec:
            return None
        pid = int(rec["pid"])
        if proc_start_time(pid) != rec.get("start"):
            return None
        return pid

    def _loop(self, plan: SandboxPlan) -> str | None:
        """The loop device of the sandbox's disk, if the launcher reported it."""
        live = self._live.get(plan.sandbox_id)
        if live is not None:
            return live.loop
        return _loop_name([str(self._init_record(plan).get("loop") or "")])

    async def is_alive(self, plan: SandboxPlan) -> bool:
        """Whether PID 1 runs; reconnects to it after a runner restart."""
        pid = self._init_pid(plan)
        if pid is None or proc_start_time(pid) is None:
            return False
        if plan.sandbox_id not in self._live:
            conn = InitConnection(str(plan.state_dir / "ctl.sock"))
            try:
                await conn.connect()
            except OSError:
                return False
            loop = _loop_name([str(self._init_record(plan).get("loop") or "")])
            self._live[plan.sandbox_id] = _Live(pid, proc_start_time(pid), conn, loop)
        return not self._live[plan.sandbox_id].conn.closed.is_set()

    async def destroy(self, plan: SandboxPlan) -> None:
        """SIGKILL PID 1 (the kernel then kills every process of the pid namespace and drops
        the mount namespace, which unmounts the rootfs and detaches the loop device), then
        remove cgroups and files."""
        pid = self._init_pid(plan)  # checked against its start time: never a reused pid
        loop = self._loop(plan)
        live = self._live.pop(plan.sandbox_id, None)
        if live is not None:
            live.conn.close()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await _reap(pid)
        if self._cgroups is not None or self.health().available:
            await asyncio.to_thread(self.cgroups.remove, plan.sandbox_id)
        await _wait_loop_detached(plan.state_dir / "disk.img", loop)
        # Freeing a large disk image's blocks can take milliseconds: not on the event loop.
        await asyncio.to_thread(_remove_files, plan.state_dir)

    # ------------------------------------------------------------------ processes

    def _conn(self, plan: SandboxPlan) -> InitConnection:
        live = self._live.get(plan.sandbox_id)
        if live is None or live.conn.closed.is_set():
            raise HutchError(
                ErrorCode.sandbox_not_running, f"sandbox {plan.sandbox_id} is not running"
            )
        return live.conn

    async def spawn(
        self, plan: SandboxPlan, req: ExecRequest, stdio: ProcessStdio
    ) -> tuple[SpawnedProcess, ExitWaiter]:
        """Ask PID 1 to fork and exec the command with the given stdio (or a new PTY)."""
        conn = self._conn(plan)
        is_root = req.user == ExecUser.root
        uid = 0 if is_root else SANDBOX_USER_UID
        home = "/root" if is_root else SANDBOX_USER_HOME
        env = {**BASE_ENV, "HOME": home, "USER": req.user.value, "HOSTNAME": plan.sandbox_id}
        if stdio.pty:
            env["TERM"] = "xterm-256color"
        env.update(plan.env)
        env.update(req.env)
        # PID 1 wants exactly stdin, stdout, stderr (or none, for a PTY); fill gaps with /dev/null
        given = [stdio.stdin, stdio.stdout, stdio.stderr]
        owned = [fd for fd in given if fd is not None]
        send: list[int] = []
        if not stdio.pty:
            for fd in given:
                if fd is None:
                    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    owned.append(fd)
                send.append(fd)
        try:
            pid, master = await conn.spawn(
                req.argv(),
                env,
                uid=uid,
                gid=uid,
                cwd=req.cwd or home,
                fds=send,
                pty=(stdio.pty.cols, stdio.pty.rows) if stdio.pty else None,
            )
        except InitError as e:
            code = e.errno
            what = str(e.strerror)
            if code in (errno.ENOENT, errno.EACCES, errno.ENOTDIR) and what.startswith("cwd"):
                raise HutchError(
                    ErrorCode.exec_failed, f"working directory {req.cwd or home!r}: {what}"
                ) from None
            raise HutchError(
                ErrorCode.exec_failed, f"cannot run {req.argv()[0]!r}: {what}"
            ) from None
        finally:
            for fd in owned:
                os.close(fd)
        return SpawnedProcess(pid=pid, pty_master=master), _Waiter(conn, pid)

    async def signal(self, plan: SandboxPlan, pid: int, sig: int) -> None:
        """Signal a process group inside the sandbox."""
        try:
            await self._conn(plan).signal(pid, sig)
        except InitError:
            raise HutchError(
                ErrorCode.process_not_found, f"no process {pid} in sandbox {plan.sandbox_id}"
            ) from None

    async def resize(self, plan: SandboxPlan, pid: int, size: PtySize) -> None:
        """Nothing to do: the runner sets the size on the PTY master it holds and the kernel
        sends SIGWINCH to the terminal's foreground process group."""

    def netns_pid(self, plan: SandboxPlan) -> int:
        """PID 1's host pid: its network namespace is the sandbox's."""
        pid = self._init_pid(plan)
        if pid is None:
            raise HutchError(
                ErrorCode.sandbox_not_running, f"sandbox {plan.sandbox_id} is not running"
            )
        return pid

    def root_path(self, plan: SandboxPlan) -> Path:
        """The sandbox's `/`, reached through its PID 1."""
        pid = self._init_pid(plan)
        if pid is None:
            raise HutchError(
                ErrorCode.sandbox_not_running, f"sandbox {plan.sandbox_id} is not running"
            )
        return Path(f"/proc/{pid}/root")

    def _netns_fd(self, plan: SandboxPlan) -> int:
        """An fd of the sandbox's network namespace, opened through PID 1 and checked against
        its start time afterwards, so a reused pid never lends us another namespace."""
        not_running = HutchError(
            ErrorCode.sandbox_not_running, f"sandbox {plan.sandbox_id} is not running"
        )
        pid = self._init_pid(plan)
        if pid is None:
            raise not_running
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise not_running from None
        if self._init_pid(plan) != pid:
            os.close(fd)
            raise not_running
        return fd

    async def connect_port(self, plan: SandboxPlan, port: int) -> socket.socket:
        """Connect to `port` on the sandbox's loopback from a thread that joined its netns."""
        fd = self._netns_fd(plan)
        try:
            return await connect_in_netns(fd, port)
        finally:
            os.close(fd)

    async def stats(self, plan: SandboxPlan) -> SandboxStats:
        """cgroup counters plus the writable layer's file-system use."""
        try:
            u = self.cgroups.usage(plan.sandbox_id)
        except FileNotFoundError:
            raise HutchError(
                ErrorCode.sandbox_not_running, f"sandbox {plan.sandbox_id} is not running"
            ) from None
        st = os.statvfs(self.root_path(plan))
        return SandboxStats(
            sandbox_id=plan.sandbox_id,
            cpu_time_us=u.cpu_time_us,
            memory_bytes=u.memory_bytes,
            memory_peak_bytes=u.memory_peak_bytes,
            memory_limit_bytes=plan.memory_mb * 1024 * 1024,
            disk_used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
            disk_limit_bytes=st.f_blocks * st.f_frsize,
            pids=u.pids,
            pids_limit=PIDS_LIMIT,
        )


async def _reap(pid: int, timeout: float = 5.0) -> None:
    """Wait until `pid` is gone, reaping it if it is our child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if proc_start_time(pid) is None:
                return
            # Not our child (adopted after a restart): wait until its parent reaps it or it
            # stays a zombie, which holds no namespaces, mounts or memory of the sandbox.
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if f.read().split(b")")[-1].split()[0] == b"Z":
                        return
            except OSError:
                return
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.002)


def _remove_files(state_dir: Path) -> None:
    for name in ("disk.img", "ctl.sock", "init.json"):
        (state_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError, OSError):
        (state_dir / "mnt").rmdir()


def _loop_name(said: list[str]) -> str | None:
    """A loop device name as the launcher reports it (`loop7`), or None."""
    name = said[0] if said else ""
    return name if name.startswith("loop") and name[4:].isdigit() else None


def _backs(name: str, target: str) -> bool:
    try:
        with open(f"/sys/block/{name}/loop/backing_file", "rb") as f:
            return f.read().rstrip(b"\n").decode(errors="replace") == target
    except OSError:  # not a loop device, or nothing attached: it backs nothing
        return False


def _loop_devices_of(image: Path, known: str | None = None) -> list[str]:
    """Loop devices backed by `image`: just `known` when the launcher said which one it used
    (the host may have hundreds of loop devices), else every one."""
    target = str(image)
    if known is not None:
        return [known] if _backs(known, target) else []
    try:
        names = [e.name for e in os.scandir("/sys/block") if e.name.startswith("loop")]
    except OSError:
        return []
    return [n for n in names if _backs(n, target)]


async def _wait_loop_detached(image: Path, known: str | None = None, timeout: float = 5.0) -> None:
    """The loop device detaches itself once the sandbox's mount namespace is freed."""
    deadline = time.monotonic() + timeout
    while _loop_devices_of(image, known):
        if time.monotonic() > deadline:
            # Something still holds it; detach by force so no device is left behind.
            for name in _loop_devices_of(image, known):
                with contextlib.suppress(OSError):
                    fd = os.open(f"/dev/{name}", os.O_RDWR)
                    try:
                        fcntl.ioctl(fd, 0x4C01)  # LOOP_CLR_FD
                    finally:
                        os.close(fd)
            return
        await asyncio.sleep(0.002)
