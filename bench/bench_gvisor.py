"""Benchmark: gVisor sandbox create → first `true`, against bare `runsc do true` in the same run.

Run as root: `.venv/bin/python bench/bench_gvisor.py [-n 20]`. Prints a table and writes
bench/results/gvisor.json. Needs runsc and a rootfs (see ROOTFS_CANDIDATES).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from hutch.ids import new_id
from hutch.models import ExecRequest, IsolationClass
from hutch.runtime.base import ProcessStdio, SandboxPlan
from hutch.runtime.gvisor import GVisorRuntime, RunscOptions

ROOTFS_CANDIDATES = [
    Path(p)
    for p in (
        os.environ.get("HUTCH_TEST_ROOTFS", ""),
        "/var/cache/hutch/templates/base/rootfs",
        "/var/cache/hutch/gvisor-test-rootfs",
    )
    if p
]
STATE_BASE = Path("/var/tmp/hutch-gvisor-bench")
# Own cgroup parent and exposure dir, so a runner on this host never mistakes these for its own.
OPTIONS = RunscOptions(
    cgroup_parent="hutch-gvisor-bench", expose_dir=Path("/run/hutch-gvisor-bench")
)
RESULTS = Path(__file__).resolve().parent / "results" / "gvisor.json"


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def plan_for(rootfs: Path, i: int) -> SandboxPlan:
    """A plan with upper/work prepared the way the runner does."""
    sid = new_id("sbx")
    uid_base = 4_000_000 + i * 65536
    state = STATE_BASE / sid
    state.mkdir(parents=True)
    STATE_BASE.chmod(0o700)
    for sub in ("upper", "work"):
        (state / sub).mkdir()
        os.chown(state / sub, uid_base, uid_base)
    return SandboxPlan(
        sandbox_id=sid,
        isolation=IsolationClass.gvisor,
        template_layers=(rootfs,),
        vcpu=1,
        memory_mb=512,
        disk_mb=1024,
        env={},
        uid_base=uid_base,
        slot=i,
        state_dir=state,
    )


async def exec_true(rt: GVisorRuntime, plan: SandboxPlan) -> None:
    """Run `true` and check it exited 0."""
    _p, waiter = await rt.spawn(plan, ExecRequest(cmd=["true"]), ProcessStdio())
    status = await waiter.wait()
    assert status.code == 0, status


async def bench_hutch(rt: GVisorRuntime, rootfs: Path, n: int) -> dict[str, list[float]]:
    """create → first exec, a warm exec, and destroy, each timed."""
    out: dict[str, list[float]] = {
        "create": [],
        "create_first_exec": [],
        "warm_exec": [],
        "destroy": [],
    }
    for i in range(n):
        plan = plan_for(rootfs, i)
        t0 = time.perf_counter()
        await rt.create(plan)
        t1 = time.perf_counter()
        await exec_true(rt, plan)
        t2 = time.perf_counter()
        await exec_true(rt, plan)
        t3 = time.perf_counter()
        await rt.destroy(plan)
        t4 = time.perf_counter()
        assert rt.leftovers(plan).empty()
        shutil.rmtree(plan.state_dir)
        out["create"].append((t1 - t0) * 1000)
        out["create_first_exec"].append((t2 - t0) * 1000)
        out["warm_exec"].append((t3 - t2) * 1000)
        out["destroy"].append((t4 - t3) * 1000)
    return out


def bench_raw(rt: GVisorRuntime, n: int) -> list[float]:
    """Bare `runsc --platform=ptrace --network=none do true`."""
    times = []
    o = rt.options
    for _ in range(n):
        with tempfile.TemporaryDirectory() as tmp:
            args = [
                str(o.binary),
                f"--root={tmp}/root",
                f"--platform={o.platform}",
                f"--network={o.network}",
                "do",
                "--quiet",
                "true",
            ]
            t0 = time.perf_counter()
            subprocess.run(args, check=True, cwd=tmp, stdin=subprocess.DEVNULL)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> int:
    """Run both, print the table, write JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    n = ap.parse_args().n
    rt = GVisorRuntime(STATE_BASE / "work", options=OPTIONS)
    health = rt.health()
    rootfs = next((p for p in ROOTFS_CANDIDATES if (p / "bin/sh").exists()), None)
    if not health.available or rootfs is None:
        print(f"cannot run: {health.reason or 'no rootfs found'}", file=sys.stderr)
        return 2
    raw = bench_raw(rt, n)
    hutch = asyncio.run(bench_hutch(rt, rootfs, n))
    rows = {"runsc do true (raw)": raw, **{f"hutch {k}": v for k, v in hutch.items()}}
    base = statistics.median(raw)
    print(f"{'measure (ms), n=' + str(n):<32}{'p50':>9}{'p99':>9}{'mean':>9}{'x raw p50':>11}")
    summary = {}
    for name, vals in rows.items():
        p50, p99 = statistics.median(vals), pct(vals, 99)
        summary[name] = {
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "mean_ms": round(statistics.fmean(vals), 1),
            "ratio_to_raw_p50": round(p50 / base, 2),
        }
        print(f"{name:<32}{p50:>9.1f}{p99:>9.1f}{statistics.fmean(vals):>9.1f}{p50 / base:>11.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "gvisor",
                "when": datetime.now(UTC).isoformat(),
                "host": {"kernel": platform.release(), "cpus": os.cpu_count()},
                "runsc": health.details.get("version"),
                "platform": rt.options.platform,
                "rootfs": str(rootfs),
                "iterations": n,
                "results": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
