"""Shared fixtures: a migrated database of each kind the run asks for (SQLite, PostgreSQL).

`--databases` (or HUTCH_TEST_DATABASES) picks the kinds, default both. A test that takes the
`database` fixture runs once per kind. PostgreSQL gets a fresh database per test session on
postgresql://postgres@127.0.0.1:5432 (HUTCH_TEST_POSTGRES_URL to change), dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator

import pytest

KINDS = ("sqlite", "postgresql")

# Every runner a test starts (directly or through `hutch serve`) shares one template cache, so
# the base template is built once per machine, not once per test.
os.environ.setdefault("HUTCH_RUNNER_TEMPLATE_DIR", "/var/cache/hutch/templates")
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--databases",
        default=os.environ.get("HUTCH_TEST_DATABASES", ",".join(KINDS)),
        help="comma-separated database kinds to run database tests against (sqlite,postgresql)",
    )


def _kinds(config: pytest.Config) -> list[str]:
    kinds = [k.strip() for k in str(config.getoption("--databases")).split(",") if k.strip()]
    if unknown := [k for k in kinds if k not in KINDS]:
        raise pytest.UsageError(f"unknown database kinds {unknown}; allowed: {', '.join(KINDS)}")
    return kinds


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_kind" in metafunc.fixturenames:
        metafunc.parametrize("db_kind", _kinds(metafunc.config), indirect=True, scope="session")


@pytest.fixture(scope="session")
def db_kind(request: pytest.FixtureRequest) -> str:
    """Which database this test runs against."""
    return str(request.param)


def _pg_admin_url() -> str:
    return os.environ.get("HUTCH_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN_URL)


@pytest.fixture(scope="session")
def database_url(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database of kind `db_kind` for the whole session."""
    from hutch.db.session import Database

    if db_kind == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'hutch.db'}"
        db = Database(url)
        db.migrate()
        db.dispose()
        yield url
        return

    import psycopg

    admin = _pg_admin_url()
    name = f"hutch_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is not reachable at {admin} ({e}); start it, or run only SQLite with "
            "HUTCH_TEST_DATABASES=sqlite",
            pytrace=False,
        )
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        db = Database(url)
        db.migrate()
        db.dispose()
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _shared_database(database_url: str):  # type: ignore[no-untyped-def]
    """One engine per session: its pool and compiled-statement cache stay warm across tests."""
    from hutch.db.session import Database

    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def database(_shared_database):  # type: ignore[no-untyped-def]
    """A `hutch.db.session.Database` on the session's database, emptied before the test."""
    from sqlalchemy import delete, func, select

    from hutch.db.base import Base

    # Fresh connections: a pooled SQLite connection can hold a snapshot from before another
    # process (a `hutch serve` of the previous test) wrote, and its DELETE would miss those rows.
    _shared_database.engine.dispose()
    with _shared_database.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    with _shared_database.engine.connect() as conn:
        left = [
            t.name
            for t in Base.metadata.sorted_tables
            if conn.execute(select(func.count()).select_from(t)).scalar()
        ]
    assert not left, f"tables not emptied: {left}"
    return _shared_database


# --- nothing a test starts may outlive the run ---

_INITS_AT_START = pytest.StashKey[set[int]]()


def _sandbox_inits() -> set[int]:
    """PIDs of sandbox init processes (each is one sandbox) on this host."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/comm") as f:
                    if f.read().strip() == "hutch-init":
                        found.add(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_INITS_AT_START] = _sandbox_inits()


def _sandbox_id(pid: int) -> str | None:
    """The sandbox an init process runs (its cgroup's name)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                name = line.rstrip().rsplit("/", 1)[-1]
                if name.startswith("sbx_"):
                    return name
    except OSError:
        pass
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if sandboxes its runners started are still there: a test, or the code it
    tests, left one behind. Those are killed so the next run starts clean. Sandboxes of
    anything else on this host (a server someone runs, another test session) are left alone:
    ours are the ones whose state directory is under this session's temporary directory."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return
    before = session.config.stash.get(_INITS_AT_START, set())
    deadline = time.monotonic() + 10  # kills issued at teardown may still be landing

    known: dict[int, str | None] = {}

    def ours(pid: int) -> str | None:
        """The sandbox id if a runner of this session started it."""
        if pid not in known:
            sid = _sandbox_id(pid)
            # A runner's data dir sits a few levels below the base (test dir, fixture dir).
            mine = sid is not None and any(
                next(base.glob(f"{'*/' * depth}sandboxes/{sid}"), None) is not None
                for depth in range(1, 5)
            )
            known[pid] = sid if mine else None
        return known[pid]

    def leaked_now() -> dict[int, str]:
        return {pid: sid for pid in _sandbox_inits() - before if (sid := ours(pid))}

    while (leaked := leaked_now()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not leaked:
        return
    for pid in leaked:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"{len(leaked)} sandbox(es) outlived the tests that started them: "
            f"{sorted(leaked.values())}",
            red=True,
        )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
