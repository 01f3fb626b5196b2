"""The API usage log: one row per request, written in batches off the request path, kept 90
days, then folded into anonymous daily counts (route, status class, day) and deleted."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import anyio
import structlog
from anyio import to_thread
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from hutch.db.audit import UsageDailyRow, UsageRow
from hutch.db.session import Database
from hutch.services.clock import Clock

log = structlog.get_logger("hutch.usage")

RETENTION = timedelta(days=90)
BUFFER_MAX = 50_000  # beyond this (database down for long), the oldest rows are dropped
BATCH = 1000
FLUSH_EVERY_S = 2.0


@dataclass(frozen=True)
class UsageRecord:
    """What is kept about one request: no body, query, path values (but the sandbox id), IP."""

    at: datetime
    key_prefix: str | None
    method: str
    route: str
    status: int
    latency_us: int
    sandbox_id: str | None


def status_class(status: int) -> str:
    """`2xx`, `4xx`, …"""
    return f"{status // 100}xx"


class UsageLog:
    """Buffers request records in memory and inserts them in batches from a background task."""

    def __init__(self, db: Database, clock: Clock, *, retention: timedelta = RETENTION) -> None:
        self.db = db
        self.clock = clock
        self.retention = retention
        self._buf: deque[UsageRecord] = deque(maxlen=BUFFER_MAX)
        self._lock = threading.Lock()
        self.dropped = 0

    # --- request path: an append to a deque, nothing else ---

    def add(self, rec: UsageRecord) -> None:
        """Queue one record (never blocks on the database)."""
        with self._lock:
            if len(self._buf) == BUFFER_MAX:
                self.dropped += 1
            self._buf.append(rec)

    def pending(self) -> int:
        """Records not yet written."""
        return len(self._buf)

    # --- background ---

    def flush(self) -> int:
        """Write everything queued, in batches; returns how many rows were written."""
        written = 0
        while True:
            with self._lock:
                batch = [self._buf.popleft() for _ in range(min(BATCH, len(self._buf)))]
            if not batch:
                return written
            try:
                with self.db.session() as s:
                    s.execute(insert(UsageRow), [rec.__dict__ for rec in batch])
                    s.commit()
            except Exception:
                with self._lock:  # put them back (in order) for the next attempt
                    self._buf.extendleft(reversed(batch))
                raise
            written += len(batch)

    async def run_flusher(self, every_s: float = FLUSH_EVERY_S) -> None:
        """Flush every `every_s` seconds until cancelled, then once more."""
        try:
            while True:
                await anyio.sleep(every_s)
                try:
                    await to_thread.run_sync(self.flush)
                except Exception as e:
                    log.warning("usage_flush_failed", error=type(e).__name__, queued=self.pending())
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await to_thread.run_sync(self.flush)
                except Exception as e:
                    log.warning("usage_flush_failed", error=type(e).__name__)

    # --- retention job ---

    def fold(self) -> int:
        """Fold raw rows older than the retention window into daily aggregates and delete them
        (one transaction per batch of days). Returns how many raw rows were folded."""
        cutoff = self.clock.now() - self.retention
        total = 0
        while True:
            with self.db.session() as s:
                n = self._fold_some(s, cutoff)
                s.commit()
            total += n
            if n == 0:
                break
        if total:
            log.info("usage_folded", rows=total)
        return total

    def _fold_some(self, s: Session, cutoff: datetime) -> int:
        oldest = s.scalar(select(func.min(UsageRow.at)).where(UsageRow.at < cutoff))
        if oldest is None:
            return 0
        # One UTC day at a time (the last one may be partial: the cutoff cuts it), grouped in SQL.
        start = datetime.combine(oldest.astimezone(UTC).date(), time(), UTC)
        end = min(cutoff, start + timedelta(days=1))
        day = start.date()
        window = (UsageRow.at >= start, UsageRow.at < end)
        rows = s.execute(
            select(
                UsageRow.method,
                UsageRow.route,
                UsageRow.status,
                func.count(),
                func.coalesce(func.sum(UsageRow.latency_us), 0),
            )
            .where(*window)
            .group_by(UsageRow.method, UsageRow.route, UsageRow.status)
        ).all()
        groups: dict[tuple[str, str, str], list[int]] = {}
        folded = 0
        for method, route, status, count, latency in rows:
            acc = groups.setdefault((method, route, status_class(status)), [0, 0])
            acc[0] += int(count)
            acc[1] += int(latency)
            folded += int(count)
        for (method, route, cls), (count, lat) in groups.items():
            agg = s.get(UsageDailyRow, (day, method, route, cls), with_for_update=True)
            if agg is None:
                s.add(
                    UsageDailyRow(
                        day=day,
                        method=method,
                        route=route,
                        status_class=cls,
                        count=count,
                        latency_us_sum=lat,
                    )
                )
            else:
                agg.count += count
                agg.latency_us_sum += lat
        s.execute(delete(UsageRow).where(*window))
        return folded
