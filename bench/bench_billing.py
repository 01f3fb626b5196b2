"""Billing benchmark: usage-heartbeat ingest (records/s on one core) on SQLite and PostgreSQL.

Each heartbeat becomes one usage record through `MeteringService.ingest` (meter row locked,
record inserted, high-water mark moved, committed), one heartbeat per transaction as the event
consumer does, and in batches of 100. The raw primitive is a bare SQLAlchemy Core INSERT of a
row of the same shape into a scratch table, committed the same way, in the same run.
Run: `.venv/bin/python -m bench.bench_billing [--sandboxes 100 --rounds 20]`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, insert
from tests.support.rows import sandbox_row

from bench._common import print_table, save
from hutch.db.models import ProjectRow, TeamRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.events import UsageHeartbeat
from hutch.services.clock import FakeClock
from hutch.services.metering import MeteringService
from hutch.services.pricing import PriceBook

PG_ADMIN = os.environ.get(
    "HUTCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@contextmanager
def database(kind: str) -> Iterator[Database]:
    """A fresh, migrated database of `kind`, dropped afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            db = Database(f"sqlite:///{Path(d) / 'bench.db'}")
            db.migrate()
            yield db
            db.dispose()
        return
    import psycopg

    name = f"hutch_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    db = Database(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
    try:
        db.migrate()
        yield db
    finally:
        db.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sandboxes(db: Database, n: int) -> list[str]:
    """One team and project with `n` running sandboxes."""
    team, project = new_id("team"), new_id("prj")
    rows = [
        sandbox_row(project, T0, memory_mb=1024, disk_mb=1024, timeout_s=3600) for _ in range(n)
    ]
    with db.session() as s:
        s.add(TeamRow(id=team, name="bench", created_at=T0))
        s.flush()
        s.add(ProjectRow(id=project, team_id=team, name="bench", created_at=T0))
        s.flush()
        s.add_all(rows)
        s.commit()
    return [r.id for r in rows]


def beats(ids: list[str], rounds: int) -> list[list[UsageHeartbeat]]:
    """Heartbeats round by round: every sandbox, 10 s windows."""
    out = []
    for r in range(rounds):
        a, b = T0 + timedelta(seconds=10 * r), T0 + timedelta(seconds=10 * (r + 1))
        out.append(
            [
                UsageHeartbeat(
                    sandbox_id=i,
                    vcpu=1,
                    memory_mb=1024,
                    window_start=a,
                    window_end=b,
                    cpu_time_us=0,
                )
                for i in ids
            ]
        )
    return out


def raw_insert(db: Database, n: int, batch: int) -> float:
    """Seconds to INSERT `n` rows of a usage record's shape, committing every `batch`."""
    md = MetaData()
    t = Table(
        f"bench_raw_{secrets.token_hex(3)}", md,
        Column("id", String(120), primary_key=True), Column("team_id", String(40)),
        Column("sandbox_id", String(40)), Column("start", DateTime(timezone=True)),
        Column("end", DateTime(timezone=True)), Column("duration_ms", BigInteger),
    )  # fmt: skip
    md.create_all(db.engine)
    try:
        start = time.perf_counter()
        i = 0
        while i < n:
            with db.engine.begin() as conn:
                for _ in range(min(batch, n - i)):
                    conn.execute(
                        insert(t).values(
                            id=f"r{i}", team_id="t", sandbox_id="s", start=T0, end=T0, duration_ms=i
                        )
                    )
                    i += 1
        return time.perf_counter() - start
    finally:
        md.drop_all(db.engine)


def ingest(db: Database, n_sandboxes: int, rounds: int, batch: int) -> tuple[int, float]:
    """Records written and seconds taken to ingest `rounds` heartbeats of every sandbox."""
    clock = FakeClock(T0 + timedelta(seconds=10 * rounds))
    metering = MeteringService(db, clock, PriceBook())
    rounds_of = beats(sandboxes(db, n_sandboxes), rounds)
    flat = [hb for r in rounds_of for hb in r]
    written = 0
    start = time.perf_counter()
    for i in range(0, len(flat), batch):
        written += metering.ingest(flat[i : i + batch])
    return written, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sandboxes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--databases", default="sqlite,postgresql")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rows: list[dict[str, object]] = []
    for kind in args.databases.split(","):
        for batch in (1, 100):
            with database(kind) as db:
                n, secs = ingest(db, args.sandboxes, args.rounds, batch)
                raw = raw_insert(db, n, batch)
            rows.append(
                {
                    "database": kind,
                    "per_commit": batch,
                    "records": n,
                    "ingest_per_s": round(n / secs),
                    "raw_insert_per_s": round(n / raw),
                    "x_raw": round(secs / raw, 2),
                }
            )
    print_table("heartbeat ingest (one core)", rows)
    save("bench_billing", rows)


if __name__ == "__main__":
    main()
