"""Engine and session handling, and migrations that run when the server starts."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import ClauseElement

from hutch.db.raw import (
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_WRITE,
    Prepared,
    Transaction,
    WouldWait,
    busy,
    transaction,
    waiting_allowed,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# anyio's default worker-thread limit: no more sessions than that are ever open at once.
SQLITE_POOL_SIZE = 40
SQLITE_MIN = (3, 35)  # RETURNING


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs that name no driver (SQLAlchemy would pick psycopg2)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (every authenticated request) proceed while one writer commits; foreign
    # keys are off by default in SQLite; the busy timeout queues writers instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


_WRITE_LOCK_TIMEOUT_S = 10.0


def _pragma(dbapi_conn: Any, sql: str) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def _nowait_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    # Checked out to work without waiting (hutch.db.raw): SQLite answers BUSY at once instead
    # of waiting for another process's write.
    if not waiting_allowed():
        _pragma(dbapi_conn, "PRAGMA busy_timeout = 0")
        record.info["hutch_nowait"] = True


def _nowait_checkin(dbapi_conn: Any, record: Any) -> None:
    if record.info.pop("hutch_nowait", False) and dbapi_conn is not None:
        try:
            _pragma(dbapi_conn, f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        except Exception as e:
            record.invalidate(e)  # never handed out again without its busy timeout


def _nowait_busy(context: Any) -> None:
    # Without waiting, BUSY from SQLAlchemy's executions is WouldWait too (not a 500).
    if not waiting_allowed() and busy(context.original_exception):
        raise WouldWait from context.original_exception


class SQLiteWriteLock:
    """One writer at a time inside this process, queued on a lock.

    SQLite allows one writer per database. Without this, concurrent writers in one process
    find the database locked and poll with SQLite's busy handler, which sleeps 1, 2, 5 … 100 ms
    between tries: a few concurrent creates then wait tens of milliseconds for a lock that was
    free long before. Here a writer takes a lock when its transaction writes for the first
    time and gives it back once SQLite has committed or rolled back, so the next one starts at
    once. Writers in other processes still meet the busy timeout.
    """

    def __init__(self) -> None:
        # A plain lock, not an RLock: a session may commit on another thread than the one that
        # wrote (sessions hop between the event loop and worker threads).
        self._lock = threading.Lock()
        self._holder: int | None = None  # id() of the DBAPI connection holding it
        self._guard = threading.Lock()

    def locked(self) -> bool:
        """Whether a write transaction holds the lock now."""
        return self._lock.locked()

    def install(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before_execute)
        # Released after the real COMMIT/ROLLBACK (the engine's commit and rollback events fire
        # before them), and when a connection is closed (e.g. invalidated).
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            try:
                commit(dbapi_connection)
            finally:
                self._release(dbapi_connection)

        def do_rollback(dbapi_connection: Any) -> None:
            try:
                rollback(dbapi_connection)
            finally:
                self._release(dbapi_connection)

        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign]
        event.listen(engine.pool, "close", self._on_close)

    def _before_execute(self, _conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if SQLITE_WRITE.match(statement):
            self.hold(cursor.connection)

    def hold(self, dbapi_connection: Any) -> None:
        """Take the lock for the transaction of `dbapi_connection` (no-op if it holds it)."""
        owner = id(dbapi_connection)
        if self._holder == owner:
            return
        if not waiting_allowed():
            if not self._lock.acquire(blocking=False):
                raise WouldWait
        elif not self._lock.acquire(timeout=_WRITE_LOCK_TIMEOUT_S):
            raise sqlite3.OperationalError(
                f"database is locked: another writer held it for over {_WRITE_LOCK_TIMEOUT_S:.0f} s"
            )
        with self._guard:
            self._holder = owner

    def _on_close(self, dbapi_connection: Any, _record: Any) -> None:
        self._release(dbapi_connection)

    def release(self, dbapi_connection: Any) -> None:
        """Give the lock back if `dbapi_connection`'s transaction holds it (after its commit or
        rollback)."""
        self._release(dbapi_connection)

    def _release(self, dbapi_connection: Any) -> None:
        # The engine passes the pool's proxy; the cursor and the pool know the raw connection.
        raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        with self._guard:
            if self._holder != id(raw):
                return
            self._holder = None
            self._lock.release()


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": self.dialect != "sqlite"}
        if self.dialect == "sqlite":
            if sqlite3.sqlite_version_info < SQLITE_MIN:
                raise RuntimeError(
                    f"SQLite {'.'.join(map(str, SQLITE_MIN))} or newer is needed (UPDATE … "
                    f"RETURNING); this Python has {sqlite3.sqlite_version}: use PostgreSQL "
                    "(HUTCH_DATABASE_URL) or a newer SQLite"
                )
            # Sessions hop between the event loop and worker threads (never concurrently).
            kwargs["connect_args"] = {"check_same_thread": False}
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                # As many kept connections as requests may use at once (one per worker
                # thread): with the default five, concurrent requests open and close overflow
                # connections all the time, each paying for a file handle and its pragmas.
                # Last in, first out: each connection has its own page cache, which SQLite
                # keeps while nobody else wrote; the most recently used one is the likeliest
                # to still hold the pages the next request reads.
                kwargs |= {
                    "pool_size": SQLITE_POOL_SIZE,
                    "max_overflow": SQLITE_POOL_SIZE,
                    "pool_use_lifo": True,
                }
        self.engine: Engine = create_engine(self.url, **kwargs)
        self.write_lock: SQLiteWriteLock | None = None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "checkout", _nowait_checkout)
            event.listen(self.engine, "checkin", _nowait_checkin)
            event.listen(self.engine, "handle_error", _nowait_busy)
            self.write_lock = SQLiteWriteLock()
            self.write_lock.install(self.engine)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        self._prepared: dict[tuple[ClauseElement, tuple[str, ...] | None], Prepared] = {}

    def prepared(self, stmt: ClauseElement, keys: Sequence[str] | None = None) -> Prepared:
        """`stmt` compiled for this database (once per statement and INSERT column list)."""
        cache_key = (stmt, tuple(keys) if keys else None)
        prepared = self._prepared.get(cache_key)
        if prepared is None:
            prepared = self._prepared[cache_key] = Prepared(stmt, self.engine.dialect, keys)
        return prepared

    @property
    def inline(self) -> bool:
        """Whether short transactions may run on the event loop, without waiting (see
        hutch.db.raw): SQLite's work is in-process; PostgreSQL's is a network round trip."""
        return self.write_lock is not None

    def raw(self) -> AbstractContextManager[Transaction]:
        """A transaction on a pooled DBAPI connection for hot statements (see hutch.db.raw)."""
        return transaction(self)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back whatever was not committed."""
        with self.sessions() as s:
            try:
                yield s
            except BaseException:
                s.rollback()
                raise

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def ping(self) -> bool:
        """Whether the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
