"""Shared bench helpers: percentiles, tables, JSON results, a runner process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of xs."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def _busy_idle() -> tuple[int, int]:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, idle


def quiesce(max_s: float = 15.0, window_s: float = 0.25, busy_below: float = 0.15) -> None:
    """Wait until the host is nearly idle (e.g. the kernel has torn down killed sandboxes'
    namespaces), so that the next measurement does not pay for the previous one."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        b0, i0 = _busy_idle()
        time.sleep(window_s)
        b1, i1 = _busy_idle()
        if (b1 - b0) <= busy_below * max(1, (b1 - b0) + (i1 - i0)):
            return
    print(f"note: the host was still busy after {max_s:.0f} s; measuring anyway", file=sys.stderr)


def summary(
    name: str, xs_s: list[float], baseline_p50_ms: float | None = None
) -> dict[str, object]:
    """p50/p99/mean in ms and throughput of a list of durations in seconds."""
    ms = [x * 1000 for x in xs_s]
    row: dict[str, object] = {
        "name": name,
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "per_s": round(1000 / statistics.fmean(ms), 1),
    }
    if baseline_p50_ms:
        row["x_baseline_p50"] = round(pct(ms, 50) / baseline_p50_ms, 2)
    return row


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    """Print rows as a table."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(r.get(c, "")) for c in cols])
    Console().print(t)


def save(name: str, data: object) -> Path:
    """Write results JSON to bench/results/NAME.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


@contextmanager
def runner_process(template_dir: Path) -> Iterator[Path]:
    """Start a runner on a temporary data dir; yield its socket."""
    data = Path(tempfile.mkdtemp(prefix="hutch-bench-"))
    env = {**os.environ, "HUTCH_RUNNER_TEMPLATE_DIR": str(template_dir)}
    log = open(data.parent / f"{data.name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "hutch.runner", "--data-dir", str(data)],
        stdout=log,
        stderr=log,
        env=env,
    )
    sock = data / "runner.sock"
    deadline = time.monotonic() + 60
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://r") as c:
        while True:
            try:
                if c.get("/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("runner did not start")
            time.sleep(0.05)
    try:
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        subprocess.run(["rm", "-rf", str(data)], check=False)
