"""SQLite writers in one process queue on a lock instead of polling SQLite's busy handler; the
lock is given back however a write transaction ends."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import column, func, insert, select, table, text
from sqlalchemy.exc import IntegrityError

from hutch.db.raw import SQLITE_BUSY_TIMEOUT_MS, WouldWait, without_waiting
from hutch.db.session import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(f"sqlite:///{tmp_path / 'lock.db'}")
    with d.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    yield d  # type: ignore[misc]
    d.dispose()


def _write(db: Database, v: str) -> None:
    with db.session() as s:
        s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
        s.commit()


def _count(db: Database) -> int:
    with db.session() as s:
        return int(s.execute(text("SELECT count(*) FROM t")).scalar_one())


def test_concurrent_writers_all_commit(db: Database) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(25):
                _write(db, f"{i}-{j}")
        except BaseException as e:  # collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and _count(db) == 200


@pytest.mark.parametrize("ending", ["rollback", "exception", "close"])
def test_every_end_of_a_write_gives_the_lock_back(db: Database, ending: str) -> None:
    assert db.write_lock is not None
    held = db.sessions()
    held.execute(text("INSERT INTO t (v) VALUES ('held')"))
    assert db.write_lock.locked()
    held.commit()
    held.close()
    assert not db.write_lock.locked()
    if ending == "rollback":
        with db.session() as s:
            s.execute(text("INSERT INTO t (v) VALUES ('x')"))
            s.rollback()
    elif ending == "exception":
        with pytest.raises(RuntimeError), db.session() as s:
            s.execute(text("INSERT INTO t (v) VALUES ('x')"))
            raise RuntimeError("the request failed half-way")
    else:  # the session is closed without commit or rollback; the pool resets the connection
        s = db.sessions()
        s.execute(text("INSERT INTO t (v) VALUES ('x')"))
        s.close()
    assert not db.write_lock.locked()
    done = threading.Event()
    threading.Thread(target=lambda: (_write(db, "next"), done.set()), daemon=True).start()
    assert done.wait(2.0), "the next writer (another thread) got the lock at once"
    assert _count(db) == 2


def test_readers_never_wait_for_a_writer(db: Database) -> None:
    _write(db, "a")
    s = db.sessions()
    s.execute(text("INSERT INTO t (v) VALUES ('held')"))  # an open write transaction
    try:
        t = time.perf_counter()
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(_count(db)))
        reader.start()
        reader.join(5)
        assert got == [1] and time.perf_counter() - t < 1.0
        assert db.write_lock is not None and db.write_lock.locked()
    finally:
        s.rollback()
        s.close()


def test_a_write_behind_a_comment_takes_the_lock(db: Database) -> None:
    assert db.write_lock is not None
    with db.session() as s:
        s.execute(text("/* tagged */ -- and noted\n INSERT INTO t (v) VALUES ('x')"))
        assert db.write_lock.locked()
        s.commit()
    assert not db.write_lock.locked()


def test_an_invalidated_connection_gives_the_lock_back(db: Database) -> None:
    assert db.write_lock is not None
    s = db.sessions()
    s.execute(text("INSERT INTO t (v) VALUES ('x')"))
    s.connection().invalidate()
    s.rollback()
    s.close()
    assert not db.write_lock.locked()
    _write(db, "after")
    assert _count(db) == 1


_T = table("t", column("id"), column("v"))
_INSERT_T = insert(_T)
_COUNT_T = select(func.count()).select_from(_T)


@pytest.mark.parametrize("ending", ["commit", "exception", "integrity error"])
def test_a_raw_transaction_holds_the_lock_from_its_first_write_to_its_end(
    db: Database, ending: str
) -> None:
    """The create path's transactions on a DBAPI connection (hutch.db.raw) queue on the same
    lock as SQLAlchemy's: taken at the first write, not by a read, given back however they
    end, even when the connection is gone from the pool."""
    assert db.write_lock is not None
    _write(db, "first")
    with db.raw() as tx:
        assert tx.first(_COUNT_T, {}) == (1,)
        assert not db.write_lock.locked()  # a read takes no lock
    failure = {"exception": RuntimeError, "integrity error": IntegrityError}.get(ending)
    try:
        with db.raw() as tx:
            tx.execute(_INSERT_T, {"v": "x"})
            assert db.write_lock.locked() and tx.held
            waiter = threading.Thread(target=_write, args=(db, "waits"))
            waiter.start()
            waiter.join(0.2)
            assert waiter.is_alive(), "another writer waits for the raw transaction"
            if ending == "exception":
                raise RuntimeError("the request failed half-way")
            if ending == "integrity error":
                tx.execute(_INSERT_T, {"id": 1, "v": "duplicate key"})
    except BaseException as e:
        assert failure is not None and isinstance(e, failure), e
    waiter.join(2.0)
    assert not waiter.is_alive() and not db.write_lock.locked()
    assert _count(db) == (3 if ending == "commit" else 2)


def test_without_waiting_a_held_lock_or_a_busy_file_raises_at_once(
    db: Database, tmp_path: Path
) -> None:
    """What the create path runs on the event loop must never wait: a writer lock held by
    another thread, or the database file locked by another process, raise WouldWait at once,
    before anything is written; afterwards the pooled connection waits as before."""
    assert db.write_lock is not None
    held = db.sessions()
    held.execute(text("INSERT INTO t (v) VALUES ('held')"))  # another thread's writer
    try:
        t = time.perf_counter()
        with pytest.raises(WouldWait), without_waiting(), db.raw() as tx:
            tx.execute(_INSERT_T, {"v": "x"})
        assert time.perf_counter() - t < 0.5
    finally:
        held.rollback()
        held.close()
    other = sqlite3.connect(tmp_path / "lock.db", isolation_level=None)  # another process
    other.execute("BEGIN IMMEDIATE")
    try:
        t = time.perf_counter()
        with pytest.raises(WouldWait), without_waiting(), db.raw() as tx:
            tx.execute(_INSERT_T, {"v": "x"})
        assert time.perf_counter() - t < 0.5, "SQLite's busy timeout did not apply"
        assert not db.write_lock.locked()
    finally:
        other.execute("ROLLBACK")
        other.close()
    with without_waiting(), db.raw() as tx:  # nothing in the way: done at once
        tx.execute(_INSERT_T, {"v": "free"})
        pooled = tx._conn.dbapi_connection
        assert pooled.execute("PRAGMA busy_timeout").fetchone() == (0,)
    assert pooled.execute("PRAGMA busy_timeout").fetchone() == (SQLITE_BUSY_TIMEOUT_MS,)
    assert _count(db) == 1
