"""One scheduler for retention and purge jobs, safe when several API processes share a database.

Each job has a row holding when it is next due and a lease. A process runs a job only after an
atomic UPDATE claimed it (due, lease free or expired): on PostgreSQL and SQLite alike exactly one
claimant sees its row updated, so each due time runs once however many processes tick. Time
comes from the injected clock. (APScheduler's SQL job store does not give this once-per-due-time
guarantee across processes, hence this small lease table.)
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import anyio
import structlog
from anyio import to_thread
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from hutch.db.audit import SchedulerJobRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.services.clock import Clock

log = structlog.get_logger("hutch.scheduler")

JobFn = Callable[[], object] | Callable[[], Awaitable[object]]
DEFAULT_LEASE = timedelta(minutes=30)
RETRY_AFTER_FAILURE = timedelta(minutes=5)


@dataclass(frozen=True)
class Job:
    """A registered job: sync callables run in a worker thread, async ones on the loop."""

    name: str
    every: timedelta
    fn: JobFn
    lease: timedelta = DEFAULT_LEASE


class Scheduler:
    """Runs registered jobs when due, each due time once across all processes."""

    def __init__(self, db: Database, clock: Clock, *, owner: str | None = None) -> None:
        self.db = db
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()[:30]}:{os.getpid()}:{new_id('req')[-8:]}"
        self.jobs: dict[str, Job] = {}

    def register(
        self, name: str, every: timedelta, fn: JobFn, *, lease: timedelta = DEFAULT_LEASE
    ) -> None:
        """Add a job (its first run is due at once). `lease` bounds how long a crashed run
        blocks the next; it should exceed the job's longest run."""
        if name in self.jobs:
            raise ValueError(f"a job named {name!r} is already registered")
        if every <= timedelta(0):
            raise ValueError("a job's interval must be positive")
        self.jobs[name] = Job(name, every, fn, lease)

    def _ensure_row(self, name: str) -> None:
        with self.db.session() as s:
            if s.get(SchedulerJobRow, name) is not None:
                return
            s.add(SchedulerJobRow(name=name, next_due_at=self.clock.now()))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # another process registered it first

    def _claim(self, job: Job) -> bool:
        self._ensure_row(job.name)
        now = self.clock.now()
        with self.db.session() as s:
            res = s.execute(
                update(SchedulerJobRow)
                .where(
                    SchedulerJobRow.name == job.name,
                    SchedulerJobRow.next_due_at <= now,
                    or_(SchedulerJobRow.lease_until.is_(None), SchedulerJobRow.lease_until <= now),
                )
                .values(lease_owner=self.owner, lease_until=now + job.lease)
            )
            s.commit()
            return bool(getattr(res, "rowcount", 0))

    def _release(self, job: Job, ok: bool) -> None:
        now = self.clock.now()
        with self.db.session() as s:
            row = s.get(SchedulerJobRow, job.name, with_for_update=True)
            if row is None or row.lease_owner != self.owner:
                return  # our lease expired and another process took over
            if ok:
                nxt = row.next_due_at + job.every
                if nxt <= now:  # missed several periods (down for a while): once is enough
                    nxt = now + job.every
            else:
                nxt = now + min(job.every, RETRY_AFTER_FAILURE)
            row.next_due_at, row.last_run_at, row.last_ok = nxt, now, ok
            row.lease_owner = row.lease_until = None
            s.commit()

    async def run_due(self) -> list[str]:
        """Claim and run every job that is due now; the names of those this process ran."""
        ran = []
        for job in list(self.jobs.values()):
            if not await to_thread.run_sync(self._claim, job):
                continue
            ok = True
            try:
                if inspect.iscoroutinefunction(job.fn):
                    await job.fn()
                else:
                    await to_thread.run_sync(job.fn)
            except Exception as e:
                ok = False
                log.warning("job_failed", job=job.name, error=type(e).__name__)
            finally:
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(self._release, job, ok)
            ran.append(job.name)
        return ran

    async def run_forever(self, tick_s: float) -> None:
        """Check for due jobs every `tick_s` seconds until cancelled."""
        while True:
            try:
                await self.run_due()
            except Exception as e:  # the database may be briefly unavailable
                log.warning("scheduler_tick_failed", error=type(e).__name__)
            await anyio.sleep(tick_s)

    def status(self) -> list[SchedulerJobRow]:
        """The job rows (for operators)."""
        with self.db.session() as s:
            return list(s.scalars(select(SchedulerJobRow).order_by(SchedulerJobRow.name)))
