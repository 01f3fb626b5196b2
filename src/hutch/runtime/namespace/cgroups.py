"""Per-sandbox cgroups on v1 (one hierarchy per controller) or v2 (unified) hosts."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

CPU_PERIOD_US = 100_000
DEFAULT_PARENT = "hutch"


def _put(path: Path, value: str) -> None:
    """Write a cgroup control file: one open, write and close (no text layer, no tty check)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Limits:
    """What a sandbox may use."""

    vcpu: int
    memory_bytes: int
    pids: int


@dataclass(frozen=True)
class Usage:
    """What a sandbox uses now."""

    cpu_time_us: int
    memory_bytes: int
    memory_peak_bytes: int
    pids: int


# The new mount API (Linux 5.2+); these numbers are the same on every architecture.
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_CLOEXEC = 1  # FSOPEN_CLOEXEC and FSMOUNT_CLOEXEC
FAVOR_HIERARCHY = "hutch-favordynmods"
_favor_fd: int | None = None


def favor_dynamic_modifications() -> None:
    """Make moving a process into a cgroup cheap for as long as this process lives.

    Every sandbox's launcher joins its cgroups by writing `cgroup.procs`. The kernel guards
    that write with a global per-cpu rwsem whose write side waits for an RCU grace period
    unless a grace period has just passed, so on an idle host each create waited 5-15 ms
    there. A cgroup hierarchy mounted with `favordynmods` (Linux 6.0+) switches that rwsem to
    the mode made for hosts that move tasks often: migrations no longer wait, and forks and
    exits take a shared lock instead of a per-cpu counter.

    This mounts an empty named v1 hierarchy with that option and holds it as a detached mount
    (it appears in no mount table); the kernel drops it when this process exits. While it is
    held, every process's /proc/PID/cgroup lists it (`N:name=hutch-favordynmods:/`). Raises
    OSError if the kernel refuses (older than 6.0, or named v1 hierarchies disabled).
    """
    global _favor_fd
    if _favor_fd is not None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def call(nr: int, *args: object) -> int:
        ret = int(syscall(ctypes.c_long(nr), *args))
        if ret < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mounting the {FAVOR_HIERARCHY} cgroup hierarchy: {os.strerror(e)}")
        return ret

    def fsconfig(fs: int, cmd: int, key: bytes | None, value: bytes | None) -> None:
        call(
            _SYS_FSCONFIG,
            ctypes.c_int(fs),
            ctypes.c_uint(cmd),
            ctypes.c_char_p(key),
            ctypes.c_char_p(value),
            ctypes.c_int(0),
        )

    fs = call(_SYS_FSOPEN, ctypes.c_char_p(b"cgroup"), ctypes.c_uint(_CLOEXEC))
    try:
        fsconfig(fs, _FSCONFIG_SET_FLAG, b"none", None)
        fsconfig(fs, _FSCONFIG_SET_STRING, b"name", FAVOR_HIERARCHY.encode())
        fsconfig(fs, _FSCONFIG_SET_FLAG, b"favordynmods", None)
        fsconfig(fs, _FSCONFIG_CMD_CREATE, None, None)
        _favor_fd = call(_SYS_FSMOUNT, ctypes.c_int(fs), ctypes.c_uint(_CLOEXEC), ctypes.c_uint(0))
    finally:
        os.close(fs)


def favoring_dynamic_modifications() -> bool:
    """Whether this process holds the `favordynmods` hierarchy."""
    return _favor_fd is not None


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fstype, _src, sopts = post.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                out.append((pre.split()[4], fstype, sopts))
    return out


class Cgroups:
    """Creates, limits, reads and removes the cgroups of sandboxes under a `hutch` parent."""

    V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")

    def __init__(self, parent: str = DEFAULT_PARENT) -> None:
        # Each runner owns one parent cgroup: its reconcile must never touch another runner's.
        self.parent = parent
        mounts = _mounts()
        self.v1: dict[str, Path] = {}
        for point, fstype, sopts in mounts:
            if fstype != "cgroup":
                continue
            for ctl in sopts.split(","):
                if ctl in self.V1_CONTROLLERS and ctl not in self.v1:
                    self.v1[ctl] = Path(point)
        v2 = [Path(p) for p, t, _ in mounts if t == "cgroup2"]
        self.v2: Path | None = None
        if not all(c in self.v1 for c in ("cpu", "memory", "pids")):
            # A unified host: the controllers live in the cgroup2 mount.
            for p in v2:
                ctrls = (p / "cgroup.controllers").read_text().split()
                if {"cpu", "memory", "pids"} <= set(ctrls):
                    self.v2 = p
                    break
            if self.v2 is None:
                raise RuntimeError(
                    "no usable cgroup hierarchy: need cpu, memory and pids controllers on "
                    "cgroup v1 or v2"
                )
            self.v1 = {}
        self._prepared = False

    @property
    def version(self) -> int:
        """1 or 2."""
        return 2 if self.v2 is not None else 1

    def _dirs(self, sandbox_id: str) -> list[Path]:
        if self.v2 is not None:
            return [self.v2 / self.parent / sandbox_id]
        return [root / self.parent / sandbox_id for root in dict.fromkeys(self.v1.values())]

    def _prepare(self) -> None:
        if self._prepared:
            return
        if self.v2 is not None:
            parent = self.v2 / self.parent
            parent.mkdir(exist_ok=True)
            for d in (self.v2, parent):
                # Let children use the controllers; the root may refuse if it has processes
                # of its own in a non-root position, which is the host's concern, not ours.
                with contextlib.suppress(OSError):
                    (d / "cgroup.subtree_control").write_text("+cpu +memory +pids")
        else:
            for root in dict.fromkeys(self.v1.values()):
                (root / self.parent).mkdir(exist_ok=True)
            mem = self.v1["memory"] / self.parent / "memory.use_hierarchy"
            with contextlib.suppress(OSError):
                mem.write_text("1")
        self._prepared = True

    def create(self, sandbox_id: str, limits: Limits) -> list[Path]:
        """Make the sandbox's cgroups with its limits; return the cgroup.procs files to join."""
        self._prepare()
        dirs = self._dirs(sandbox_id)
        try:
            for d in dirs:
                d.mkdir()
            self._set_limits(sandbox_id, limits)
        except BaseException:
            self.remove(sandbox_id)
            raise
        return [d / "cgroup.procs" for d in dirs]

    def _set_limits(self, sandbox_id: str, lim: Limits) -> None:
        quota = lim.vcpu * CPU_PERIOD_US
        if self.v2 is not None:
            d = self.v2 / self.parent / sandbox_id
            _put(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            _put(d / "memory.max", str(lim.memory_bytes))
            with contextlib.suppress(FileNotFoundError):
                _put(d / "memory.swap.max", "0")
            _put(d / "pids.max", str(lim.pids))
            return
        cpu = self.v1["cpu"] / self.parent / sandbox_id
        _put(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _put(cpu / "cpu.cfs_quota_us", str(quota))
        mem = self.v1["memory"] / self.parent / sandbox_id
        _put(mem / "memory.limit_in_bytes", str(lim.memory_bytes))
        # memory+swap equal to memory: no swap at all
        with contextlib.suppress(FileNotFoundError):
            _put(mem / "memory.memsw.limit_in_bytes", str(lim.memory_bytes))
        with contextlib.suppress(OSError):
            _put(mem / "memory.swappiness", "0")
        _put(self.v1["pids"] / self.parent / sandbox_id / "pids.max", str(lim.pids))

    def usage(self, sandbox_id: str) -> Usage:
        """Current use; raises FileNotFoundError once the cgroup is gone."""
        if self.v2 is not None:
            d = self.v2 / self.parent / sandbox_id
            stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines() if line)
            peak = d / "memory.peak"
            cur = int((d / "memory.current").read_text())
            return Usage(
                cpu_time_us=int(stat.get("usage_usec", 0)),
                memory_bytes=cur,
                memory_peak_bytes=int(peak.read_text()) if peak.exists() else cur,
                pids=int((d / "pids.current").read_text()),
            )
        mem = self.v1["memory"] / self.parent / sandbox_id
        acct = self.v1.get("cpuacct", self.v1["cpu"]) / self.parent / sandbox_id
        return Usage(
            cpu_time_us=int((acct / "cpuacct.usage").read_text()) // 1000,
            memory_bytes=int((mem / "memory.usage_in_bytes").read_text()),
            memory_peak_bytes=int((mem / "memory.max_usage_in_bytes").read_text()),
            pids=int((self.v1["pids"] / self.parent / sandbox_id / "pids.current").read_text()),
        )

    def procs(self, sandbox_id: str) -> list[int]:
        """Host pids of every process in the sandbox's cgroup."""
        pids: set[int] = set()
        for d in self._dirs(sandbox_id):
            with contextlib.suppress(FileNotFoundError):
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(pids)

    def exists(self, sandbox_id: str) -> bool:
        """Whether any cgroup directory of the sandbox remains."""
        return any(d.exists() for d in self._dirs(sandbox_id))

    def remove(self, sandbox_id: str, timeout: float = 5.0) -> None:
        """Kill what is left in the cgroups and remove them (waits for the kernel to empty them)."""
        deadline = time.monotonic() + timeout
        for d in self._dirs(sandbox_id):
            while d.exists():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    for pid in self.procs(sandbox_id):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, 9)
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)

    def remove_parent(self) -> None:
        """Remove this runner's parent cgroups if nothing is left in them (a live sandbox, of
        any isolation class, keeps them: its next start adopts it)."""
        roots = [self.v2] if self.v2 is not None else list(dict.fromkeys(self.v1.values()))
        for root in roots:
            with contextlib.suppress(OSError):  # absent, or not empty
                (root / self.parent).rmdir()
        self._prepared = False

    def list_ids(self) -> set[str]:
        """Sandbox ids that have a cgroup on this host."""
        ids: set[str] = set()
        roots = [self.v2] if self.v2 is not None else list(dict.fromkeys(self.v1.values()))
        for root in roots:
            parent = root / self.parent
            if parent.is_dir():
                ids.update(p.name for p in parent.iterdir() if p.is_dir())
        return ids
