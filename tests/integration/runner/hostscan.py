"""Scan the host for anything a sandbox left behind."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
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


BASE_CHAINS = {
    "prerouting_raw",
    "prerouting_nat",
    "input",
    "forward",
    "postrouting_nat",
    "postrouting_raw",
}


def network_leftovers(netns: str | None, link_prefix: str, table: str) -> list[str]:
    """Sandbox network traces of one runner in a network namespace (None: the host's): links
    named with the runner's prefix, and per-sandbox chains, map entries or counters in its
    nftables table. An empty list means no sandbox has any left."""
    enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    found: list[str] = []
    out = subprocess.run([*enter, "ip", "-j", "link"], capture_output=True, text=True, timeout=30)
    for link in json.loads(out.stdout or "[]"):
        if str(link.get("ifname", "")).startswith(link_prefix):
            found.append(f"link {link['ifname']}")
    out = subprocess.run(
        [*enter, "nft", "-j", "list", "table", "inet", table],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode == 0:
        for item in json.loads(out.stdout).get("nftables", []):
            if "chain" in item and item["chain"]["name"] not in BASE_CHAINS:
                found.append(f"nft chain {item['chain']['name']}")
            if "counter" in item:
                found.append(f"nft counter {item['counter']['name']}")
            if "map" in item and item["map"].get("elem"):
                found.append(f"nft map {item['map']['name']} entries {item['map']['elem']}")
    return found
