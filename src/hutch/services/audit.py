"""The tamper-evident admin log: hash-chained entries plus Ed25519-signed checkpoints.

Each entry's hash is SHA-256 over the canonical JSON (sorted keys, no whitespace, UTF-8) of its
fields including the previous entry's hash. A checkpoint signs (seq, hash, time) with a key kept
outside the database, so whoever can write the database can neither rewrite history covered by a
checkpoint nor cut the tail it vouches for. Pruning old entries keeps a checkpoint on the last
pruned entry as the anchor the remaining chain starts from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from hutch.db.audit import AdminLogCheckpointRow, AdminLogHeadRow, AdminLogRow
from hutch.ids import new_id
from hutch.services.clock import Clock
from hutch.services.permissions import Principal

log = structlog.get_logger("hutch.audit")

GENESIS = "0" * 64
HEAD_ID = 1
CHECKPOINT_EVERY = 100  # entries between checkpoints written by the append itself
MAX_DETAIL_LEN = 500
MIN_RETENTION = timedelta(days=365)  # the promise: admin actions are kept at least a year


def canonical(obj: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(row: AdminLogRow) -> str:
    """The hash an entry must carry, given its fields and its `prev_hash`."""
    return hashlib.sha256(
        canonical(
            {
                "seq": row.seq,
                "id": row.id,
                "at": _ts(row.at),
                "actor_user_id": row.actor_user_id,
                "action": row.action,
                "target_type": row.target_type,
                "target_id": row.target_id,
                "source_ip": row.source_ip,
                "details": row.details or {},
                "prev_hash": row.prev_hash,
            }
        )
    ).hexdigest()


def checkpoint_message(seq: int, hash_: str, at: datetime) -> bytes:
    """What a checkpoint signs."""
    return canonical({"v": 1, "seq": seq, "hash": hash_, "at": _ts(at)})


# --- the signing key (kept apart from the database) ---


def public_key_id(pub: Ed25519PublicKey) -> str:
    """A short fingerprint naming the key that signed a checkpoint."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(pub: Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo)."""
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key, or the public half of a PEM private key file."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        priv = serialization.load_pem_private_key(data, password=None)
        if not isinstance(priv, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
        return priv.public_key()
    pub = serialization.load_pem_public_key(data)
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return pub


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The checkpoint signing key at `path`, created (0600, PEM) on first use; its public half
    is written next to it as `<name>.pub` for verifiers."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        priv = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(priv, Ed25519PrivateKey):
            raise RuntimeError(f"{path} is not an Ed25519 private key") from None
    else:
        priv = Ed25519PrivateKey.generate()
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    pub_path = path.with_name(path.name + ".pub")
    if not pub_path.exists():
        pub_path.write_bytes(public_pem(priv.public_key()))
    return priv


@dataclass(frozen=True)
class Entry:
    """An admin log entry as read back."""

    seq: int
    id: str
    at: datetime
    actor_user_id: str | None
    action: str
    target_type: str
    target_id: str
    source_ip: str | None
    details: dict[str, str]
    hash: str


def _entry(row: AdminLogRow) -> Entry:
    return Entry(
        seq=row.seq,
        id=row.id,
        at=row.at,
        actor_user_id=row.actor_user_id,
        action=row.action,
        target_type=row.target_type,
        target_id=row.target_id,
        source_ip=row.source_ip,
        details=dict(row.details or {}),
        hash=row.hash,
    )


def _insert_head(session: Session) -> Any:
    values = {"id": HEAD_ID, "seq": 0, "hash": GENESIS}
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(AdminLogHeadRow).values(**values).on_conflict_do_nothing()
    return sqlite_insert(AdminLogHeadRow).values(**values).on_conflict_do_nothing()


class AdminLog:
    """Append-only, hash-chained log of administrative actions.

    `record` adds the entry to the caller's transaction, so the action and its entry commit (or
    roll back) together. Appends serialize on the chain-head row, whose lock is held until the
    caller's commit: on PostgreSQL a row lock, on SQLite the single writer lock.
    """

    def __init__(
        self,
        clock: Clock,
        signing_key: Ed25519PrivateKey,
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.clock = clock
        self._key = signing_key
        self.public_key = signing_key.public_key()
        self.key_id = public_key_id(self.public_key)
        self.checkpoint_every = checkpoint_every

    def record(
        self,
        session: Session,
        *,
        actor_user_id: str | None,
        action: str,
        target_type: str,
        target_id: str,
        source_ip: str | None,
        details: dict[str, str] | None = None,
    ) -> Entry:
        """Append an entry in the caller's transaction (the caller commits). `details` holds
        short names and ids only: never secret values, keys or request bodies."""
        clean = {str(k)[:64]: str(v)[:MAX_DETAIL_LEN] for k, v in (details or {}).items()}
        # The caller's pending rows are flushed by its own commit (where it handles conflicts).
        with session.no_autoflush:
            return self._append(
                session,
                AdminLogRow(
                    id=new_id("aud"),
                    at=self.clock.now(),
                    actor_user_id=actor_user_id,
                    action=action,
                    target_type=target_type,
                    target_id=target_id,
                    source_ip=source_ip,
                    details=clean,
                ),
            )

    def record_for(
        self,
        session: Session,
        actor: Principal,
        action: str,
        target_type: str,
        target_id: str,
        details: dict[str, str] | None = None,
    ) -> Entry:
        """`record` for an action taken by an authenticated caller."""
        return self.record(
            session,
            actor_user_id=actor.user_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            source_ip=actor.source_ip,
            details=details,
        )

    def _append(self, session: Session, row: AdminLogRow) -> Entry:
        seq, prev = self._lock_head(session)
        row.seq, row.prev_hash = seq, prev
        row.hash = entry_hash(row)
        session.add(row)
        session.execute(
            update(AdminLogHeadRow).where(AdminLogHeadRow.id == HEAD_ID).values(hash=row.hash)
        )
        if self.checkpoint_every and seq % self.checkpoint_every == 0:
            self._sign(session, seq, row.hash)
        return _entry(row)

    def _lock_head(self, session: Session) -> tuple[int, str]:
        """Take the next sequence number; the UPDATE takes the row (or SQLite's write) lock
        before anything is read, so two writers never see the same head."""
        bump = update(AdminLogHeadRow).where(AdminLogHeadRow.id == HEAD_ID)
        if session.execute(bump.values(seq=AdminLogHeadRow.seq + 1)).rowcount == 0:  # type: ignore[attr-defined]
            # The very first entry: create the head (a concurrent first writer may win).
            session.execute(_insert_head(session))
            session.execute(bump.values(seq=AdminLogHeadRow.seq + 1))
        seq, prev = session.execute(
            select(AdminLogHeadRow.seq, AdminLogHeadRow.hash).where(AdminLogHeadRow.id == HEAD_ID)
        ).one()
        return int(seq), str(prev)

    def _sign(self, session: Session, seq: int, hash_: str) -> None:
        at = self.clock.now()
        sig = self._key.sign(checkpoint_message(seq, hash_, at))
        session.merge(
            AdminLogCheckpointRow(
                seq=seq,
                hash=hash_,
                at=at,
                key_id=self.key_id,
                signature=base64.b64encode(sig).decode(),
            )
        )

    def checkpoint(self, session: Session) -> int | None:
        """Sign the current head if no checkpoint covers it yet (commits); its seq, or None."""
        head = session.get(AdminLogHeadRow, HEAD_ID, with_for_update=True)
        if head is None or head.seq == 0:
            session.rollback()
            return None
        if session.get(AdminLogCheckpointRow, head.seq) is None:
            self._sign(session, head.seq, head.hash)
        session.commit()
        return head.seq

    def prune(self, session: Session, *, older_than: timedelta) -> int:
        """Delete entries older than `older_than`, keeping a signed checkpoint on the last one
        deleted as the anchor of what remains (commits). Returns how many were deleted."""
        if older_than < MIN_RETENTION:
            raise ValueError("admin log entries are kept at least 365 days")
        cutoff = self.clock.now() - older_than
        # Only a prefix of the chain goes, so what remains is still one unbroken chain.
        first_kept = session.scalar(
            select(func.min(AdminLogRow.seq)).where(AdminLogRow.at >= cutoff)
        )
        upto = select(func.max(AdminLogRow.seq))
        if first_kept is not None:
            upto = upto.where(AdminLogRow.seq < first_kept)
        last = session.scalar(upto)
        if last is None:
            session.rollback()
            return 0
        anchor = session.get(AdminLogRow, last)
        assert anchor is not None
        if session.get(AdminLogCheckpointRow, last) is None:
            self._sign(session, last, anchor.hash)
        n = session.execute(delete(AdminLogRow).where(AdminLogRow.seq <= last)).rowcount  # type: ignore[attr-defined]
        session.execute(delete(AdminLogCheckpointRow).where(AdminLogCheckpointRow.seq < last))
        self.record(
            session,
            actor_user_id=None,
            action="audit.prune",
            target_type="admin_log",
            target_id=str(last),
            source_ip=None,
            details={"deleted": str(n), "before": _ts(cutoff)},
        )
        session.commit()
        log.info("admin_log_pruned", deleted=n, anchor_seq=last)
        return int(n)

    def list(
        self,
        session: Session,
        *,
        limit: int,
        after_seq: int | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        actor_user_id: str | None = None,
        action: str | None = None,
    ) -> list[Entry]:
        """Entries in chain order, filtered."""
        stmt = select(AdminLogRow).order_by(AdminLogRow.seq).limit(limit)
        if after_seq is not None:
            stmt = stmt.where(AdminLogRow.seq > after_seq)
        if target_type is not None:
            stmt = stmt.where(AdminLogRow.target_type == target_type)
        if target_id is not None:
            stmt = stmt.where(AdminLogRow.target_id == target_id)
        if actor_user_id is not None:
            stmt = stmt.where(AdminLogRow.actor_user_id == actor_user_id)
        if action is not None:
            stmt = stmt.where(AdminLogRow.action == action)
        return [_entry(r) for r in session.scalars(stmt)]
