"""Alembic environment: runs on the connection `Database.migrate` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from hutch.db import models  # noqa: F401  (registers every table on the metadata)
from hutch.db.base import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables when a migration needs it.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the `alembic` command line, for writing new revisions
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "set sqlalchemy.url (e.g. alembic -x) to run migrations from the command line"
    with create_engine(url).connect() as conn:
        _run(conn)
