"""The host cgroups runsc makes for a sandbox (`/hutch/<id>`), on cgroup v1 or v2."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.gvisor.bundle import CGROUP_PARENT, cgroups_path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def sandbox_cgroups(
    sandbox_id: str, parent: str = CGROUP_PARENT, root: Path = CGROUP_ROOT
) -> list[Path]:
    """Every cgroup directory that belongs to the sandbox (existing or not)."""
    rel = cgroups_path(sandbox_id, parent).lstrip("/")
    if _is_unified(root):
        return [root / rel]
    out = []
    for hier in sorted(root.iterdir()):
        # Named/combined hierarchies (cpu,cpuacct) appear once as a real mount; symlinks
        # (cpu -> cpu,cpuacct) would list the same directory twice.
        if hier.is_dir() and not hier.is_symlink() and hier.name != "unified":
            out.append(hier / rel)
    return out


def _is_unified(root: Path) -> bool:
    return (root / "cgroup.controllers").exists()


@dataclass
class CgroupUsage:
    """What the host kernel charges to the sandbox (sentry, gofer and platform stubs)."""

    cpu_time_us: int = 0
    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    pids: int = 0


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _find(sandbox_id: str, controller_file: str, parent: str, root: Path) -> Path | None:
    for cg in sandbox_cgroups(sandbox_id, parent, root):
        if (cg / controller_file).exists():
            return cg / controller_file
    return None


def usage(sandbox_id: str, parent: str = CGROUP_PARENT, root: Path = CGROUP_ROOT) -> CgroupUsage:
    """Read CPU, memory and task counts from the sandbox's cgroups (zeros where missing)."""
    u = CgroupUsage()
    if _is_unified(root):
        cg = root / cgroups_path(sandbox_id, parent).lstrip("/")
        with contextlib.suppress(OSError):
            for line in (cg / "cpu.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "usage_usec":
                    u.cpu_time_us = int(v)
        u.memory_bytes = _read_int(cg / "memory.current") or 0
        u.memory_peak_bytes = _read_int(cg / "memory.peak") or u.memory_bytes
        u.pids = _read_int(cg / "pids.current") or 0
        return u
    if p := _find(sandbox_id, "cpuacct.usage", parent, root):
        u.cpu_time_us = (_read_int(p) or 0) // 1000
    if p := _find(sandbox_id, "memory.usage_in_bytes", parent, root):
        u.memory_bytes = _read_int(p) or 0
        u.memory_peak_bytes = _read_int(p.with_name("memory.max_usage_in_bytes")) or 0
    if p := _find(sandbox_id, "pids.current", parent, root):
        u.pids = _read_int(p) or 0
    return u


def existing(sandbox_id: str, parent: str = CGROUP_PARENT, root: Path = CGROUP_ROOT) -> list[Path]:
    """The sandbox's cgroup directories that still exist."""
    return [p for p in sandbox_cgroups(sandbox_id, parent, root) if p.is_dir()]


def member_pids(sandbox_id: str, parent: str = CGROUP_PARENT, root: Path = CGROUP_ROOT) -> set[int]:
    """Host pids still inside any of the sandbox's cgroups."""
    pids: set[int] = set()
    for cg in existing(sandbox_id, parent, root):
        for sub, _dirs, _files in os.walk(cg):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in Path(sub, "cgroup.procs").read_text().split())
    return pids


def kill_members(sandbox_id: str, parent: str = CGROUP_PARENT, root: Path = CGROUP_ROOT) -> None:
    """SIGKILL every host process still in the sandbox's cgroups."""
    for pid in member_pids(sandbox_id, parent, root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove(sandbox_id: str, parent: str = CGROUP_PARENT, root: Path = CGROUP_ROOT) -> list[Path]:
    """rmdir the sandbox's cgroups, children first; return the ones that could not go."""
    left = []
    for cg in existing(sandbox_id, parent, root):
        for sub, _dirs, _files in sorted(os.walk(cg), key=lambda t: -len(t[0])):
            try:
                os.rmdir(sub)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(Path(sub))
    return left
