"""The create path's statements on a pooled DBAPI connection, past SQLAlchemy's execution layer.

A sandbox create writes a handful of small rows in two transactions. SQLite does each in tens
of microseconds; SQLAlchemy's connection, transaction and execution-context objects around
them cost several times that, and most of all after the process has been idle for a few
milliseconds (its long code paths start from cold caches every time), which is how an API sees
creates. Here a Core statement is compiled once per database, its parameters go through the
column types' own bind processors (the same conversions SQLAlchemy applies), and a transaction
is a pooled DBAPI connection, its cursor and a commit. Database errors of its statements and
commit are raised as SQLAlchemy's exceptions, so callers catch the same `IntegrityError`
either way.

Without waiting (`without_waiting`): SQLite work this short costs less than handing it to a
worker thread and back (two thread wake-ups), so the create path may run it on the event loop,
where it must not wait: a writer lock another thread holds, a database another process is
writing (SQLite's busy timeout is 0 on connections checked out meanwhile, see
hutch.db.session) or a pool with no free connection raise `WouldWait` at once instead, before
anything was written, and the caller does the work in a worker thread after all.

Only for statements whose parameters are all bound values (no expanding IN lists) and INSERTs
that give every column they need (Python-side column defaults are not applied): the callers
keep to those.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Dialect, Insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

if TYPE_CHECKING:
    from hutch.db.session import Database


SQLITE_BUSY_TIMEOUT_MS = 10_000  # how long a writer waits for another process's transaction
_SQLITE_BUSY = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_no_wait: ContextVar[bool] = ContextVar("hutch_db_no_wait", default=False)


class WouldWait(Exception):
    """The work would have to wait for a lock (raised only inside `without_waiting`)."""


@contextmanager
def without_waiting() -> Iterator[None]:
    """Within the block, database locks are taken only if free (else `WouldWait`)."""
    token = _no_wait.set(True)
    try:
        yield
    finally:
        _no_wait.reset(token)


def waiting_allowed() -> bool:
    """False inside `without_waiting`."""
    return not _no_wait.get()


@contextmanager
def holding(lock: threading.Lock) -> Iterator[None]:
    """`with lock`, except that inside `without_waiting` a lock held elsewhere raises
    `WouldWait`."""
    if not lock.acquire(blocking=waiting_allowed()):
        raise WouldWait
    try:
        yield
    finally:
        lock.release()


# Statements after which pysqlite has opened a write transaction (it issues BEGIN right before
# them, once past leading comments; a plain SELECT runs outside any transaction).
SQLITE_WRITE = re.compile(
    r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:INSERT|UPDATE|DELETE|REPLACE)\b",
    re.IGNORECASE | re.DOTALL,
)


class Prepared:
    """A statement compiled for one database, with its parameter and result conversions."""

    __slots__ = ("_order", "_processors", "_results", "sql", "writes")

    def __init__(
        self, stmt: ClauseElement, dialect: Dialect, keys: Sequence[str] | None = None
    ) -> None:
        compiled = cast(
            SQLCompiler,
            stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None),
        )
        self.sql = compiled.string
        # The order of positional parameters (qmark: SQLite); None for named ones (psycopg).
        self._order = compiled.positiontup
        self._processors = {
            name: proc
            for name, bind in compiled.binds.items()
            if (proc := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self.writes = SQLITE_WRITE.match(self.sql) is not None
        # Per column of the rows it returns (SELECT or RETURNING): its type's conversion.
        columns = getattr(stmt, "exported_columns", ())
        self._results = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        ]

    def params(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The DBAPI parameters for `values` (bind name → Python value)."""
        procs = self._processors
        out = {k: (p(v) if (p := procs.get(k)) is not None else v) for k, v in values.items()}
        if self._order is None:
            return out
        return [out[name] for name in self._order]

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """A fetched row with each column converted as SQLAlchemy converts it."""
        return tuple(p(v) if p is not None else v for p, v in zip(self._results, raw, strict=True))


class Transaction:
    """Statements on one DBAPI connection, committed together."""

    __slots__ = ("_conn", "_cursor", "_db", "_dbapi_error", "_lock", "held")

    def __init__(self, db: Database, conn: Any) -> None:
        self._db = db
        self._conn = conn
        self._cursor = conn.cursor()
        self._dbapi_error: type[Exception] = db.engine.dialect.loaded_dbapi.Error
        self._lock = db.write_lock
        self.held = False  # whether this transaction holds SQLite's in-process writer lock

    def execute(self, stmt: ClauseElement, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run `stmt` with `values`; returns the rows it gives (SELECT or RETURNING). An INSERT
        sets the columns named by the keys of `values`, and only those."""
        prepared = self._db.prepared(stmt, tuple(values) if isinstance(stmt, Insert) else None)
        params = prepared.params(values)
        try:
            if prepared.writes and self._lock is not None and not self.held:
                # As SQLAlchemy's executions do: the lock from the first write to the commit.
                self._lock.hold(self._conn.dbapi_connection)
                self.held = True
            self._cursor.execute(prepared.sql, params)
            raw = self._cursor.fetchall() if self._cursor.description is not None else []
        except self._dbapi_error as e:
            if busy(e) and not waiting_allowed():
                raise WouldWait from e
            raise DBAPIError.instance(
                prepared.sql, params, e, self._dbapi_error, dialect=self._db.engine.dialect
            ) from e
        return [prepared.row(r) for r in raw]

    def first(self, stmt: ClauseElement, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a SELECT or RETURNING (None if none)."""
        rows = self.execute(stmt, values)
        return rows[0] if rows else None


def busy(e: BaseException | None) -> bool:
    """Whether `e` is SQLite's BUSY or LOCKED (in any of their extended forms)."""
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, sqlite3.Error) and isinstance(code, int) and code & 0xFF in _SQLITE_BUSY


@contextmanager
def transaction(db: Database) -> Iterator[Transaction]:
    """A transaction on a pooled DBAPI connection: committed when the block ends, rolled back
    if it raises."""
    pool = db.engine.pool
    if (
        not waiting_allowed()
        and isinstance(pool, QueuePool)
        and pool.checkedin() == 0
        and pool.overflow() >= pool._max_overflow  # every connection is in use: would wait
    ):
        raise WouldWait
    conn = db.engine.raw_connection()
    dbapi = conn.dbapi_connection  # still known after an invalidation
    tx: Transaction | None = None
    try:
        tx = Transaction(db, conn)
        try:
            yield tx
            try:
                conn.commit()
            except tx._dbapi_error as e:
                if busy(e) and not waiting_allowed():
                    raise WouldWait from e
                raise DBAPIError.instance(
                    "COMMIT", None, e, tx._dbapi_error, dialect=db.engine.dialect
                ) from e
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                conn.invalidate()  # a connection that cannot roll back is not reused
            raise
        finally:
            tx._cursor.close()
    finally:
        try:
            if tx is not None and tx.held and db.write_lock is not None:
                db.write_lock.release(dbapi)
        finally:
            conn.close()  # back to the pool
