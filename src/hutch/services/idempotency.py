"""Idempotency-Key: the first response to a create is kept 24 h and replayed for retries."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from hutch.db.models import IdempotencyRow
from hutch.db.raw import Transaction
from hutch.db.session import Database
from hutch.models.common import ErrorCode, HutchError
from hutch.services.clock import Clock

TTL = timedelta(hours=24)
_IDEMPOTENCY = cast(Table, IdempotencyRow.__table__)
MAX_KEY_LEN = 255

# The hot statements, built once and run on a DBAPI connection (hutch.db.raw): building a
# statement, or SQLAlchemy's execution layer, costs more than running it.
_c = _IDEMPOTENCY.c
# (bind names differ from column names: UPDATE reserves those for its SET values)
_MINE = (_c.scope == bindparam("p_scope")) & (_c["key"] == bindparam("p_key"))
_FIND = select(_c.request_hash, _c.status, _c.body, _c.created_at).where(_MINE)
_FORGET = delete(_IDEMPOTENCY).where(_MINE)
_CLAIM = insert(_IDEMPOTENCY)
_RECORD = (
    update(_IDEMPOTENCY).where(_MINE).values(status=bindparam("p_status"), body=bindparam("p_body"))
)


@dataclass(frozen=True)
class Claim:
    """An Idempotency-Key as one request presents it."""

    scope: str  # whose keys these are (owner, project, mode)
    key: str
    fingerprint: str  # the request, hashed: the same key with another request is a conflict


@dataclass(frozen=True)
class Stored:
    """A response kept for replay."""

    status: int
    body: str


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """Hash of what was asked: same key with a different request is a conflict."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    h = hashlib.sha256(f"{method} {path}\n".encode())
    h.update(canonical)
    return h.hexdigest()


def _conflict(detail: str) -> HutchError:
    return HutchError(ErrorCode.idempotency_conflict, detail)


class IdempotencyService:
    """Claims keys, records first responses and replays them."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def find(self, tx: Transaction, claim: Claim) -> Stored | None:
        """The response to replay for `claim`'s key, None if the key is free (an expired
        record is dropped); 409 if it was used for another request or is still in progress."""
        mine = {"p_scope": claim.scope, "p_key": claim.key}
        row = tx.first(_FIND, mine)
        if row is not None and row[3] + TTL <= self.clock.now():
            tx.execute(_FORGET, mine)
            row = None
        if row is None:
            return None
        request_hash, status, body, _ = row
        if request_hash != claim.fingerprint:
            raise _conflict(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new request"
            )
        if status is None or body is None:
            raise _conflict("a request with this Idempotency-Key is still in progress")
        return Stored(status, body)

    def take(self, tx: Transaction, claim: Claim) -> None:
        """Claim the key within the caller's transaction (409 if a concurrent request did)."""
        values = {
            "scope": claim.scope,
            "key": claim.key,
            "request_hash": claim.fingerprint,
            "created_at": self.clock.now(),
        }
        try:
            tx.execute(_CLAIM, values)
        except IntegrityError:
            raise _conflict("a request with this Idempotency-Key is still in progress") from None

    def begin(self, claim: Claim) -> Stored | None:
        """Claim the key for this request, or return the response to replay; 409 on misuse."""
        with self.db.raw() as tx:
            stored = self.find(tx, claim)
            if stored is None:
                self.take(tx, claim)
            return stored

    def record(self, tx: Transaction, claim: Claim, stored: Stored) -> None:
        """Record the first response within the caller's transaction."""
        params = {"p_status": stored.status, "p_body": stored.body}
        tx.execute(_RECORD, {"p_scope": claim.scope, "p_key": claim.key} | params)

    def complete(self, claim: Claim, stored: Stored) -> None:
        """Record the first response."""
        with self.db.raw() as tx:
            self.record(tx, claim, stored)

    def abandon(self, claim: Claim) -> None:
        """Forget a claim whose request failed, so a retry runs again."""
        with self.db.raw() as tx:
            tx.execute(_FORGET, {"p_scope": claim.scope, "p_key": claim.key})

    def purge(self) -> int:
        """Delete records older than the retention window; returns how many."""
        with self.db.session() as s:
            n = s.execute(
                delete(IdempotencyRow).where(IdempotencyRow.created_at <= self.clock.now() - TTL)
            )
            s.commit()
            return int(getattr(n, "rowcount", 0) or 0)
