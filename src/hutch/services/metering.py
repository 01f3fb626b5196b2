"""Metering: runner usage heartbeats (and model calls) become idempotent usage records.

Each sandbox has a meter row holding `billed_until`, the end of what is already recorded. A
heartbeat for `[window_start, window_end)` records `[billed_until, window_end)`: a replayed or
overlapping window is cut at the mark, so nothing is counted twice, and a gap (heartbeats the
runner sent while this server was down; the sandbox ran throughout, the runner says so by still
reporting it) is filled. Records are split at UTC midnight and named by sandbox id and start, so
even two processes ingesting the same heartbeat write one record (the second insert conflicts).
Usage ends with the final heartbeat at kill or timeout; if the runner or the server dies, it ends
at the last heartbeat received.

A record belongs to the calendar month it started in, unless that month's invoice is already
finalized: then it goes to the current month (`late`), so a finalized invoice never changes.
Heartbeats whose window ended longer ago than the late window are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hutch.db.billing import InvoiceRow, SandboxMeterRow, UsageRecordRow
from hutch.db.models import ProjectRow, SandboxRow
from hutch.db.session import Database
from hutch.models.events import UsageHeartbeat
from hutch.services.clock import Clock
from hutch.services.pricing import PriceBook

log = structlog.get_logger("hutch.metering")
SANDBOX_METER = "sandbox"
MODEL_DIRECTIONS = ("input", "output")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(t: datetime) -> int:
    """Whole milliseconds since the epoch (floor), so split spans add up exactly."""
    d = t - EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def period_of(t: datetime) -> str:
    """The billing period (calendar month, UTC) a time falls in: `YYYY-MM`."""
    return f"{t.year:04d}-{t.month:02d}"


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of a `YYYY-MM` period."""
    y, m = (int(p) for p in period.split("-"))
    start = datetime(y, m, 1, tzinfo=UTC)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    return start, end


def split_days(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """`[start, end)` cut at every UTC midnight."""
    out = []
    while start < end:
        midnight = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=1)
        stop = min(end, midnight)
        out.append((start, stop))
        start = stop
    return out


@dataclass(frozen=True)
class Owner:
    """Whose usage a sandbox's records are."""

    team_id: str
    project_id: str
    mode: str


class MeteringService:
    """Turns usage reports into usage records."""

    def __init__(
        self, db: Database, clock: Clock, prices: PriceBook, late_window_s: float = 86400.0
    ) -> None:
        self.db = db
        self.clock = clock
        self.prices = prices
        self.late_window = timedelta(seconds=late_window_s)

    # --- periods ---

    def period_closed(self, session: Session, team_id: str, period: str) -> bool:
        """Whether the team's invoice for `period` is finalized (then it never changes)."""
        status = session.scalar(
            select(InvoiceRow.status).where(
                InvoiceRow.team_id == team_id, InvoiceRow.period == period
            )
        )
        return status is not None and status != "open"

    def _period_for(
        self, session: Session, team_id: str, at: datetime, cache: dict[tuple[str, str], bool]
    ) -> tuple[str, bool]:
        natural, current = period_of(at), period_of(self.clock.now())
        # Only past months are ever finalized, so the current month needs no look-up.
        if natural >= current:
            return natural, False
        key = (team_id, natural)
        if key not in cache:
            cache[key] = self.period_closed(session, team_id, natural)
        return (current, True) if cache[key] else (natural, False)

    def _record(
        self,
        session: Session,
        owner: Owner,
        rid: str,
        meter: str,
        start: datetime,
        end: datetime,
        cache: dict[tuple[str, str], bool],
    ) -> dict[str, Any]:
        period, late = self._period_for(session, owner.team_id, start, cache)
        return {
            "id": rid,
            "meter": meter,
            "team_id": owner.team_id,
            "project_id": owner.project_id,
            "sandbox_id": None,
            "mode": owner.mode,
            "vcpu": 0,
            "memory_mb": 0,
            "start": start,
            "end": end,
            "duration_ms": 0,
            "vcpu_ms": 0,
            "mib_ms": 0,
            "units": 0,
            "price_version": self.prices.at(start).version,
            "period": period,
            "hour": start.replace(minute=0, second=0, microsecond=0),
            "late": late,
            "created_at": self.clock.now(),
        }

    # --- sandboxes ---

    def _meters(
        self, session: Session, first: dict[str, UsageHeartbeat]
    ) -> dict[str, SandboxMeterRow]:
        """Meter rows of these sandboxes, locked; created for sandboxes seen the first time."""
        ids = sorted(first)
        meters = {
            m.sandbox_id: m
            for m in session.scalars(
                select(SandboxMeterRow).where(SandboxMeterRow.sandbox_id.in_(ids)).with_for_update()
            )
        }
        missing = [i for i in ids if i not in meters]
        if not missing:
            return meters
        found = session.execute(
            select(
                SandboxRow.id,
                SandboxRow.project_id,
                SandboxRow.mode,
                SandboxRow.created_at,
                ProjectRow.team_id,
            )
            .join(ProjectRow, ProjectRow.id == SandboxRow.project_id)
            .where(SandboxRow.id.in_(missing))
        ).all()
        # Sandboxes we do not know (another control plane's runner, a deleted project) are
        # not metered.
        for sandbox_id, project_id, mode, created_at, team_id in found:
            hb = first[sandbox_id]
            # Heartbeats missed before the first one we see (this server was down as the
            # sandbox started) are filled from its creation time, when that is plausible.
            start = hb.window_start
            if hb.window_start - self.late_window <= created_at < hb.window_start:
                start = created_at
            meter = SandboxMeterRow(
                sandbox_id=sandbox_id,
                team_id=team_id,
                project_id=project_id,
                mode=mode,
                started_at=start,
                billed_until=start,
                closed=False,
            )
            session.add(meter)
            meters[sandbox_id] = meter
        return meters

    def _spans(
        self,
        session: Session,
        meter: SandboxMeterRow,
        hb: UsageHeartbeat,
        cache: dict[tuple[str, str], bool],
    ) -> list[dict[str, Any]]:
        """Records for the part of `hb` beyond the meter's mark; moves the mark."""
        if meter.closed:
            return []
        start, end = meter.billed_until, hb.window_end
        if hb.final:
            meter.closed = True
        if end <= start:
            return []
        owner = Owner(meter.team_id, meter.project_id, meter.mode)
        out = []
        for a, b in split_days(start, end):
            ms = epoch_ms(b) - epoch_ms(a)
            rec = self._record(
                session, owner, f"{hb.sandbox_id}@{a.isoformat()}", SANDBOX_METER, a, b, cache
            )
            rec.update(
                sandbox_id=hb.sandbox_id,
                vcpu=hb.vcpu,
                memory_mb=hb.memory_mb,
                duration_ms=ms,
                vcpu_ms=ms * hb.vcpu,
                mib_ms=ms * hb.memory_mb,
            )
            out.append(rec)
        meter.billed_until = end
        return out

    def ingest(self, heartbeats: Iterable[UsageHeartbeat]) -> int:
        """Record heartbeats in one transaction (one meter look-up and one bulk insert per
        batch); returns how many records were written."""
        cutoff = self.clock.now() - self.late_window
        fresh = []
        for hb in heartbeats:
            if hb.window_end < cutoff:
                log.warning("usage_too_late", sandbox_id=hb.sandbox_id)
            else:
                fresh.append(hb)
        if not fresh:
            return 0
        first: dict[str, UsageHeartbeat] = {}
        for hb in fresh:
            first.setdefault(hb.sandbox_id, hb)
        with self.db.session() as s:
            try:
                meters = self._meters(s, first)
                cache: dict[tuple[str, str], bool] = {}
                rows = [
                    rec
                    for hb in fresh
                    if hb.sandbox_id in meters
                    for rec in self._spans(s, meters[hb.sandbox_id], hb, cache)
                ]
                if rows:
                    s.execute(insert(UsageRecordRow), rows)
                s.commit()
            except IntegrityError:
                # Another process recorded the same span first (same deterministic id).
                s.rollback()
                return 0
            return len(rows)

    def close(self, sandbox_id: str) -> None:
        """The sandbox ended without a final heartbeat reaching us: usage ends where it is."""
        with self.db.session() as s:
            meter = s.get(SandboxMeterRow, sandbox_id, with_for_update=True)
            if meter is not None and not meter.closed:
                meter.closed = True
                s.commit()

    # --- model usage (fed by a model gateway) ---

    def record_model_usage(
        self,
        *,
        request_id: str,
        team_id: str,
        project_id: str,
        mode: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        at: datetime | None = None,
    ) -> int:
        """Meter one model call (idempotent per `request_id`); returns records written."""
        if not model or ":" in model or len(model) > 80:
            raise ValueError("model names are 1-80 characters without ':'")
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts cannot be negative")
        when = at or self.clock.now()
        owner = Owner(team_id, project_id, mode)
        with self.db.session() as s:
            rows: list[dict[str, Any]] = []
            cache: dict[tuple[str, str], bool] = {}
            for direction, units in zip(
                MODEL_DIRECTIONS, (input_tokens, output_tokens), strict=True
            ):
                rid = f"{request_id}:{direction}"
                if units == 0 or s.get(UsageRecordRow, rid) is not None:
                    continue
                meter = f"model:{model}:{direction}"
                rec = self._record(s, owner, rid, meter, when, when, cache)
                rec["units"] = units
                rows.append(rec)
            try:
                if rows:
                    s.execute(insert(UsageRecordRow), rows)
                s.commit()
            except IntegrityError:
                s.rollback()
                return 0
            return len(rows)
