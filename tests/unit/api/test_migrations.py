"""Migrations: shipped in the package, run at start-up, and match the ORM models exactly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from hutch.db.base import Base
from hutch.db.session import MIGRATIONS_DIR, Database, normalize_url


def test_migrated_schema_matches_the_models(database: Database) -> None:
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    tables = set(inspect(database.engine).get_table_names())
    assert {
        "users",
        "teams",
        "team_members",
        "projects",
        "api_keys",
        "sandboxes",
        "sandbox_metadata",
        "idempotency_records",
        "admin_log",
        "admin_log_checkpoints",
        "exec_audit",
        "api_usage",
        "api_usage_daily",
        "scheduler_jobs",
        "sandbox_ports",
        "alembic_version",
    } <= tables


def test_migrate_is_idempotent(database: Database) -> None:
    database.migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x' / 'hutch.db'}")
    db.migrate()
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("0001_*.py"))
    assert "site-packages" in str(MIGRATIONS_DIR) or "src/hutch/db" in str(MIGRATIONS_DIR)


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
