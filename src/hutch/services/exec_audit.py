"""The sandbox exec audit trail (opt-in per project): which command ran (argv[0]'s basename
only), when, and how it ended. Arguments, environment, stdin, output and files never reach it."""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Select, select, update

from hutch.db.audit import ExecAuditRow
from hutch.db.models import ProjectRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.api import Page
from hutch.models.audit import ExecRecord
from hutch.services.clock import Clock
from hutch.services.pagination import paginate

EXPORT_BATCH = 500
CSV_FIELDS = list(ExecRecord.model_fields)


def command_name(argv0: str) -> str:
    """The basename of argv[0], and nothing else of the command line."""
    name = posixpath.basename(argv0.rstrip("/")) or argv0[:1]
    return name[:255]


def _wire(row: ExecAuditRow) -> ExecRecord:
    return ExecRecord(
        id=row.id,
        project_id=row.project_id,
        sandbox_id=row.sandbox_id,
        command=row.command,
        kind=row.kind,
        pid=row.pid,
        exit_code=row.exit_code,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


class ExecAudit:
    """Writes and reads the exec trail. Callers hand it argv[0] only."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def enabled(self, project_id: str) -> bool:
        """Whether the project opted in."""
        with self.db.session() as s:
            return bool(s.scalar(select(ProjectRow.audit_exec).where(ProjectRow.id == project_id)))

    def start(
        self,
        *,
        project_id: str,
        sandbox_id: str,
        argv0: str,
        kind: str,
        mode: str = "live",
        pid: int | None = None,
        started_at: datetime | None = None,
        exit_code: int | None = None,
        ended_at: datetime | None = None,
    ) -> str:
        """Record a command (finished already when `ended_at` is given); returns the record id."""
        row = ExecAuditRow(
            id=new_id("aud"),
            project_id=project_id,
            mode=mode,
            sandbox_id=sandbox_id,
            command=command_name(argv0),
            kind=kind,
            pid=pid,
            exit_code=exit_code,
            started_at=started_at or self.clock.now(),
            ended_at=ended_at,
        )
        with self.db.session() as s:
            s.add(row)
            s.commit()
        return row.id

    def set_pid(self, record_id: str, pid: int) -> None:
        """Note the pid of a streamed command once the runner reports it."""
        with self.db.session() as s:
            s.execute(update(ExecAuditRow).where(ExecAuditRow.id == record_id).values(pid=pid))
            s.commit()

    def finish(
        self,
        *,
        exit_code: int | None,
        record_id: str | None = None,
        sandbox_id: str | None = None,
        pid: int | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """Record how a command ended (by record id, or by sandbox and pid)."""
        stmt = update(ExecAuditRow).where(ExecAuditRow.ended_at.is_(None))
        if record_id is not None:
            stmt = stmt.where(ExecAuditRow.id == record_id)
        else:
            stmt = stmt.where(ExecAuditRow.sandbox_id == sandbox_id, ExecAuditRow.pid == pid)
        with self.db.session() as s:
            s.execute(stmt.values(exit_code=exit_code, ended_at=ended_at or self.clock.now()))
            s.commit()

    # --- reads ---

    def _query(
        self,
        project_id: str,
        *,
        mode: str | None,
        sandbox_id: str | None,
        command: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> Select[ExecAuditRow]:
        stmt = select(ExecAuditRow).where(ExecAuditRow.project_id == project_id)
        if mode is not None:  # test-mode keys see only test-mode sandboxes' commands
            stmt = stmt.where(ExecAuditRow.mode == mode)
        if sandbox_id is not None:
            stmt = stmt.where(ExecAuditRow.sandbox_id == sandbox_id)
        if command is not None:
            stmt = stmt.where(ExecAuditRow.command == command)
        if since is not None:
            stmt = stmt.where(ExecAuditRow.started_at >= since)
        if until is not None:
            stmt = stmt.where(ExecAuditRow.started_at < until)
        return stmt

    def list(
        self,
        project_id: str,
        *,
        limit: int,
        cursor: str | None,
        mode: str | None = None,
        sandbox_id: str | None = None,
        command: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Page[ExecRecord]:
        """One page, newest first."""
        stmt = self._query(
            project_id, mode=mode, sandbox_id=sandbox_id, command=command, since=since, until=until
        )
        with self.db.session() as s:
            rows, nxt = paginate(s, stmt, ExecAuditRow.id, limit=limit, cursor=cursor)
            return Page[ExecRecord](items=[_wire(r) for r in rows], next_cursor=nxt)

    def export(
        self,
        project_id: str,
        fmt: str,
        *,
        mode: str | None = None,
        sandbox_id: str | None = None,
        command: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[str]:
        """Every matching record, oldest first, as JSON Lines or CSV (with a header)."""
        stmt = self._query(
            project_id, mode=mode, sandbox_id=sandbox_id, command=command, since=since, until=until
        ).order_by(ExecAuditRow.id)
        if fmt == "csv":
            yield _csv_line(CSV_FIELDS)
        after = ""
        while True:
            with self.db.session() as s:
                rows = list(s.scalars(stmt.where(ExecAuditRow.id > after).limit(EXPORT_BATCH)))
            if not rows:
                return
            for row in rows:
                rec = _wire(row)
                if fmt == "csv":
                    data = rec.model_dump(mode="json")
                    yield _csv_line(["" if data[f] is None else str(data[f]) for f in CSV_FIELDS])
                else:
                    yield rec.model_dump_json() + "\n"
            after = rows[-1].id


def _csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()
