"""Usage-log overhead: p50 of GET /v1/sandboxes/{id} on a real uvicorn server with the usage
log off (records dropped at the middleware) and on (queued, flushed in batches by the
background task), alternating blocks in the same run. Needs no root (no runner).
`.venv/bin/python -m bench.bench_usage`
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import func, select
from tests.support.rows import sandbox_row

from bench._common import print_table, save, summary
from hutch.api.app import create_app
from hutch.api.logging import configure_logging
from hutch.api.settings import ApiSettings
from hutch.db.audit import UsageRow
from hutch.db.models import ProjectRow
from hutch.db.session import Database
from hutch.services.accounts import AccountService
from hutch.services.bootstrap import ensure_admin
from hutch.services.clock import SystemClock
from hutch.services.keys import KeyService, load_pepper
from hutch.services.usage import UsageRecord


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(n: int, blocks: int) -> None:
    """Measure and print."""
    configure_logging("warning")  # request lines would dominate the measurement
    data = Path(tempfile.mkdtemp(prefix="hutch-bench-usage-"))
    settings = ApiSettings(data_dir=data, log_level="warning")
    db = Database(settings.db_url())
    db.migrate()
    clock = SystemClock()
    keys = KeyService(load_pepper(data), clock)
    ensure_admin(db, AccountService(clock), keys, data)
    key = (data / "admin-key").read_text().strip()
    with db.session() as s:
        project = s.execute(select(ProjectRow.id).limit(1)).scalar_one()
        row = sandbox_row(project, clock.now(), timeout_s=3600)
        sid = row.id
        s.add(row)
        s.commit()
    app = create_app(settings, clock=clock, database=db)
    usage = app.state.services.usage_log
    real_add = usage.add

    def drop(_rec: UsageRecord) -> None:
        return None

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    off: list[float] = []
    on: list[float] = []
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        ) as c:
            for _ in range(50):
                c.get(f"/v1/sandboxes/{sid}").raise_for_status()
            for b in range(blocks * 2):
                usage.add = drop if b % 2 == 0 else real_add  # type: ignore[method-assign]
                out = off if b % 2 == 0 else on
                for _ in range(n):
                    t0 = time.perf_counter()
                    c.get(f"/v1/sandboxes/{sid}").raise_for_status()
                    out.append(time.perf_counter() - t0)
    finally:
        server.should_exit = True
        t.join(timeout=30)
    with db.session() as s:
        written = s.scalar(select(func.count()).select_from(UsageRow))
    base = summary("GET /v1/sandboxes/{id}, usage log off", off)
    rows = [base, summary("GET /v1/sandboxes/{id}, usage log on", on, float(base["p50_ms"]))]  # type: ignore[arg-type]
    print_table("Usage log overhead (same run, alternating blocks)", rows)
    print(f"usage rows written by the background flusher: {written}")
    print(f"results: {save('usage', {'rows': rows, 'usage_rows_written': written})}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--blocks", type=int, default=5)
    a = ap.parse_args()
    main(a.n, a.blocks)
