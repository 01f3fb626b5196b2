"""Keyset pagination over time-sortable ids: stable under inserts, no duplicates, no skips."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from hutch.models.common import ErrorCode, HutchError

T = TypeVar("T")
LIMIT_MIN, LIMIT_MAX, LIMIT_DEFAULT = 1, 100, 50
_CURSOR_ID = re.compile(r"^[a-z]{2,5}_[0-9a-z]{26}$")


def encode_cursor(last_id: str) -> str:
    """An opaque cursor pointing just past `last_id`."""
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor points past; 422 if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith("v1:") or not _CURSOR_ID.match(raw[3:]):
        raise HutchError(
            ErrorCode.invalid_request,
            "cursor is not valid: pass back the next_cursor of a previous page unchanged",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        )
    return raw[3:]


def paginate(
    session: Session,
    stmt: Select[Any],
    id_col: InstrumentedAttribute[str],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[Any], str | None]:
    """Run `stmt` newest first, one page after `cursor`; returns rows and the next cursor."""
    if cursor:
        stmt = stmt.where(id_col < decode_cursor(cursor))
    rows = session.scalars(stmt.order_by(id_col.desc()).limit(limit + 1)).all()
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(getattr(rows[-1], id_col.key))
