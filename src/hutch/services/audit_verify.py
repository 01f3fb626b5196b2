"""Check the admin log: every hash, every link, every checkpoint signature, and that the log
reaches at least as far as the newest signed checkpoint (truncation)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from hutch.db.audit import AdminLogCheckpointRow, AdminLogHeadRow, AdminLogRow
from hutch.services.audit import GENESIS, HEAD_ID, checkpoint_message, entry_hash, public_key_id

BATCH = 1000
MAX_PROBLEMS = 100


@dataclass
class Verification:
    """What `verify` found; `ok` only when there is no problem at all."""

    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    latest_checkpoint_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the log is intact."""
        return not self.problems

    def problem(self, text: str) -> None:
        """Note a problem (bounded, so a wrecked log still gives a short answer)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def _signed(pub: Ed25519PublicKey, key_id: str, cp: AdminLogCheckpointRow) -> bool:
    if cp.key_id != key_id:
        return False
    try:
        pub.verify(base64.b64decode(cp.signature), checkpoint_message(cp.seq, cp.hash, cp.at))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def verify(session: Session, public_key: Ed25519PublicKey) -> Verification:
    """Verify the whole admin log against the checkpoint public key (read-only)."""
    out = Verification()
    key_id = public_key_id(public_key)
    signed: dict[int, str] = {}
    for cp in session.scalars(select(AdminLogCheckpointRow).order_by(AdminLogCheckpointRow.seq)):
        out.checkpoints += 1
        if _signed(public_key, key_id, cp):
            signed[cp.seq] = cp.hash
        else:
            out.problem(f"checkpoint at seq {cp.seq}: signature invalid or by another key")
    out.latest_checkpoint_seq = max(signed) if signed else None

    prev: AdminLogRow | None = None
    after = 0
    while True:
        rows = list(
            session.scalars(
                select(AdminLogRow)
                .where(AdminLogRow.seq > after)
                .order_by(AdminLogRow.seq)
                .limit(BATCH)
            )
        )
        if not rows:
            break
        for row in rows:
            _check_row(out, row, prev, signed)
            prev = row
        after = rows[-1].seq
        session.expunge_all()

    latest = out.latest_checkpoint_seq
    if latest is not None and (out.last_seq is None or out.last_seq < latest):
        out.problem(
            f"truncated: a signed checkpoint vouches for entry {latest} but the log ends at "
            f"{out.last_seq if out.last_seq is not None else 'no entry'}"
        )
    head = session.get(AdminLogHeadRow, HEAD_ID)
    if head is not None and out.last_seq is not None and head.seq != out.last_seq:
        out.problem(f"the chain head says {head.seq} entries but the log ends at {out.last_seq}")
    return out


def _check_row(
    out: Verification, row: AdminLogRow, prev: AdminLogRow | None, signed: dict[int, str]
) -> None:
    out.entries += 1
    out.last_seq = row.seq
    if prev is None:
        out.first_seq = row.seq
        if row.seq == 1:
            if row.prev_hash != GENESIS:
                out.problem("entry 1 does not start from the genesis hash")
        elif row.seq - 1 not in signed:
            out.problem(
                f"entries before {row.seq} are missing and no signed checkpoint anchors the rest"
            )
        elif signed[row.seq - 1] != row.prev_hash:
            out.problem(f"entry {row.seq} does not continue from the signed anchor")
    else:
        if row.seq != prev.seq + 1:
            out.problem(f"entries {prev.seq + 1}..{row.seq - 1} are missing")
        if row.prev_hash != prev.hash:
            out.problem(f"entry {row.seq} does not link to entry {prev.seq} (removed or reordered)")
    if entry_hash(row) != row.hash:
        out.problem(f"entry {row.seq} was altered: its content does not match its hash")
    if row.seq in signed and signed[row.seq] != row.hash:
        out.problem(f"entry {row.seq} differs from what its signed checkpoint vouches for")
