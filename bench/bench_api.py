"""API benchmark: the SDK end to end through `hutch serve`, against the runner directly.

Measures SDK create → first exec (`true`) and the same on the runner socket in the same run,
exec `true` through the SDK, creates/s with 16 concurrent SDK clients (and 16 concurrent
clients on the runner socket, the ceiling on this machine), and GET sandbox requests/s. The
API's overhead is also given as the median difference of neighbouring SDK and runner-socket
measurements, which the host's drift moves less than a difference of two p50s.
Run as root: `.venv/bin/python -m bench.bench_api`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench._common import print_table, quiesce, save, summary
from hutch import Sandbox
from hutch.models import ExecRequest, RunnerCreate
from hutch.runner.client import RunnerClient
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(data: Path, port: int) -> subprocess.Popen[bytes]:
    """`hutch serve` on a temporary data dir; returns once it answers."""
    env = {
        **os.environ,
        "HUTCH_RUNNER_TEMPLATE_DIR": str(SHARED_TEST_TEMPLATE_DIR),
        "HUTCH_CREATE_RATE_PER_MINUTE": "100000",
        "HUTCH_MAX_CONCURRENT_SANDBOXES": "10000",
        "HUTCH_LOG_LEVEL": "warning",
        # The sandboxes made on the runner socket are unknown to the API, whose reconciler
        # would kill them as orphans mid-measurement.
        "HUTCH_RECONCILE_INTERVAL_S": "3600",
    }
    log = open(data.parent / f"{data.name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hutch.cli.main",
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=log,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                and (data / "admin-key").exists()
            ):
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("hutch serve did not start")


def main(n: int) -> None:
    """Run every measurement and print/save the results."""
    TemplateStore(SHARED_TEST_TEMPLATE_DIR).ensure("base")
    data = Path(tempfile.mkdtemp(prefix="hutch-bench-api-"))
    port = free_port()
    proc = start_serve(data, port)
    url, key = f"http://127.0.0.1:{port}", (data / "admin-key").read_text().strip()
    rows: list[dict[str, object]] = []
    extra: dict[str, object] = {}
    try:
        kw = {"api_url": url, "api_key": key}
        Sandbox.create(**kw).kill()  # warm-up

        async def direct_concurrent(total: int) -> float:
            # 16 clients at once on the runner socket: the ceiling for the API's creates/s.
            async with RunnerClient(data / "runner.sock") as c:
                gate = asyncio.Semaphore(16)

                async def one() -> str:
                    async with gate:
                        return (await c.create(RunnerCreate())).sandbox_id

                t = time.perf_counter()
                ids = await asyncio.gather(*[one() for _ in range(total)])
                rate = total / (time.perf_counter() - t)
                await asyncio.gather(*[c.kill(i) for i in ids])
            return rate

        # Runner-socket and SDK measurements alternate (which goes first alternates too), so
        # both see the same host: the same live sandboxes, the same background clean-up.
        loop = asyncio.new_event_loop()
        rc = RunnerClient(data / "runner.sock")
        created, first = [], []
        direct_ids, sandboxes = [], []

        async def direct_one() -> float:
            t = time.perf_counter()
            sb = await rc.create(RunnerCreate())
            await rc.run(sb.sandbox_id, ExecRequest(cmd=["true"]))
            direct_ids.append(sb.sandbox_id)
            return time.perf_counter() - t

        def sdk_one() -> float:
            t = time.perf_counter()
            sb = Sandbox.create(**kw)
            sb.commands.run(["true"])  # the argv the runner runs (a string means bash -lc)
            sandboxes.append(sb)
            return time.perf_counter() - t

        for i in range(n):
            if i % 2:
                first.append(sdk_one())
                created.append(loop.run_until_complete(direct_one()))
            else:
                created.append(loop.run_until_complete(direct_one()))
                first.append(sdk_one())
        direct_execs, ex = [], []
        sb0, sid0 = sandboxes[0], direct_ids[0]
        for _ in range(n * 4):
            t = time.perf_counter()
            loop.run_until_complete(rc.run(sid0, ExecRequest(cmd=["true"])))
            direct_execs.append(time.perf_counter() - t)
            t = time.perf_counter()
            sb0.commands.run(["true"])
            ex.append(time.perf_counter() - t)
        for sid in direct_ids:
            loop.run_until_complete(rc.kill(sid))
        loop.run_until_complete(rc.aclose())
        loop.close()
        base = summary("runner socket: create → first exec(true)", created)
        exec_base = summary("runner socket: exec(true)", direct_execs)
        rows += [base, exec_base]
        rows.append(summary("SDK: create → first exec(true)", first, float(base["p50_ms"])))  # type: ignore[arg-type]
        rows.append(summary("SDK: exec(true)", ex, float(exec_base["p50_ms"])))  # type: ignore[arg-type]
        gets = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as h:
            for _ in range(n * 10):
                t = time.perf_counter()
                h.get(f"/v1/sandboxes/{sb0.sandbox_id}").raise_for_status()
                gets.append(time.perf_counter() - t)
        rows.append(summary("GET /v1/sandboxes/{id}", gets))
        for sb in sandboxes:
            sb.kill()
        total = max(160, n * 4)  # enough creates that start-up and stragglers do not dominate
        quiesce()  # each run starts on an idle host, not during the last one's clean-up
        extra["runner_creates_per_s_16_clients"] = round(asyncio.run(direct_concurrent(total)), 1)
        quiesce()
        t = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            made = list(pool.map(lambda _: Sandbox.create(**kw), range(total)))
        extra["sdk_creates_per_s_16_clients"] = round(total / (time.perf_counter() - t), 1)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: s.kill(), made))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(data)], check=False)
    # Each SDK measurement ran next to a runner-socket one: the median of the pairs'
    # differences is what the API and SDK add, with less of the host's drift than p50 - p50.
    extra["api_overhead_create_first_exec_ms"] = round(
        statistics.median(a - b for a, b in zip(first, created, strict=True)) * 1000, 2
    )
    extra["api_overhead_exec_ms"] = round(
        statistics.median(a - b for a, b in zip(ex, direct_execs, strict=True)) * 1000, 2
    )
    print_table("Hutch API + SDK vs the runner socket", rows)
    for k, v in extra.items():
        print(f"{k}: {v}")
    print(f"results: {save('api', {'rows': rows, **extra})}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    main(ap.parse_args().n)
