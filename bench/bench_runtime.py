"""Runtime benchmark: the runner protocol against the raw primitive (a bare bwrap spawn).

Measures create → first exec (`true`), exec `true` in a running sandbox, create throughput with
16 concurrent clients and idle density (host memory per idle sandbox). Run as root:
`.venv/bin/python -m bench.bench_runtime [--density N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time

from bench._common import print_table, runner_process, save, summary
from hutch.models import ExecRequest, RunnerCreate
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore


def bare_bwrap(n: int) -> list[float]:
    """The raw primitive: a bubblewrap spawn into fresh namespaces running `true`."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return []
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([bwrap, "--unshare-all", "--ro-bind", "/", "/", "--", "true"], check=True)
        out.append(time.perf_counter() - t)
    return out


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


async def main(n: int, density: int) -> None:
    """Run every measurement and print/save the results."""
    TemplateStore(SHARED_TEST_TEMPLATE_DIR).ensure("base")
    rows: list[dict[str, object]] = []
    extra: dict[str, object] = {}
    bw = bare_bwrap(n)
    base = summary("bare bwrap --unshare-all true", bw) if bw else None
    if base:
        rows.append(base)
    bp50 = float(base["p50_ms"]) if base else None  # type: ignore[arg-type]
    with runner_process(SHARED_TEST_TEMPLATE_DIR) as sock:
        async with RunnerClient(sock) as c:
            true = ExecRequest(cmd=["true"])
            # warm-up: first create builds the golden disk image
            w = await c.create(RunnerCreate())
            await c.kill(w.sandbox_id)

            first: list[float] = []
            ids = []
            for _ in range(n):
                t = time.perf_counter()
                sb = await c.create(RunnerCreate())
                await c.run(sb.sandbox_id, true)
                first.append(time.perf_counter() - t)
                ids.append(sb.sandbox_id)
            rows.append(summary("create → first exec(true)", first, bp50))

            ex: list[float] = []
            for _ in range(n * 4):
                t = time.perf_counter()
                await c.run(ids[0], true)
                ex.append(time.perf_counter() - t)
            rows.append(summary("exec(true) in running sandbox", ex, bp50))

            kills: list[float] = []
            for sid in ids:
                t = time.perf_counter()
                await c.kill(sid)
                kills.append(time.perf_counter() - t)
            rows.append(summary("kill", kills))

            # throughput: 16 concurrent clients
            total = max(64, n * 2)
            made: list[str] = []
            sem = asyncio.Semaphore(16)

            async def one() -> None:
                async with sem:
                    made.append((await c.create(RunnerCreate())).sandbox_id)

            t = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(total)))
            el = time.perf_counter() - t
            extra["create_throughput_16_clients_per_s"] = round(total / el, 1)
            await asyncio.gather(*(c.kill(s) for s in made))

            if density:
                before = meminfo()
                made = []
                sem = asyncio.Semaphore(16)
                t = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(density)))
                el = time.perf_counter() - t
                await asyncio.sleep(2)
                after = meminfo()
                used = (before["MemAvailable"] - after["MemAvailable"]) / density
                extra["density_sandboxes"] = len(made)
                extra["density_create_s"] = round(el, 1)
                extra["density_host_mib_per_idle_sandbox"] = round(used / 2**20, 3)
                t = time.perf_counter()
                for i in range(0, len(made), 64):
                    await asyncio.gather(*(c.kill(s) for s in made[i : i + 64]))
                extra["density_kill_all_s"] = round(time.perf_counter() - t, 1)
    print_table("Hutch runtime (namespace class) vs bare bwrap", rows)
    for k, v in extra.items():
        print(f"{k}: {v}")
    path = save("runtime", {"rows": rows, **extra})
    print(f"results: {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--density", type=int, default=1000)
    a = ap.parse_args()
    asyncio.run(main(a.n, a.density))
