"""PostgreSQL-only tests: the SQLite variants are deselected here."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        kind = params.params.get("db_kind") if params else None
        here = "tests/postgres/" in str(item.path).replace("\\", "/")
        (drop if here and kind not in (None, "postgresql") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
