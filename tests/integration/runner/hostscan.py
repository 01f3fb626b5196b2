"""Scan the host for anything a sandbox left behind."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def leftovers(sandbox_id: str, state_dir: Path) -> list[str]:
    """Every trace of a sandbox still on the host: processes, cgroups, mounts, loop devices,
    files. An empty list means nothing remains."""
    found: list[str] = []
    # processes whose cgroup names the sandbox, or whose command line does
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cg = Path(f"/proc/{pid}/cgroup").read_text()
            if sandbox_id in cg:
                found.append(f"process {pid} in the sandbox's cgroup")
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if sandbox_id.encode() in cmd:
                found.append(f"process {pid}: {cmd[:80]!r}")
    for root in Path("/sys/fs/cgroup").iterdir():
        for d in [*root.glob(f"hutch*/{sandbox_id}"), root / sandbox_id]:
            if d.exists():
                found.append(f"cgroup {d}")
    # mounts in any mount namespace still alive
    seen_ns: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            if ns in seen_ns:
                continue
            seen_ns.add(ns)
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
                if sandbox_id in line:
                    found.append(f"mount in {ns}: {line[:160]}")
    for dev in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            backing = (dev / "loop" / "backing_file").read_text().strip()
            if sandbox_id in backing:
                found.append(f"loop device {dev.name} -> {backing}")
    if state_dir.exists():
        found.append(f"directory {state_dir}")
    return found
