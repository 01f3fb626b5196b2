"""The admin log: hash chain, signed checkpoints, verification against each kind of tampering,
pruning that keeps the rest verifiable, and concurrent writers."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update

from hutch.db.audit import AdminLogCheckpointRow, AdminLogHeadRow, AdminLogRow
from hutch.db.session import Database
from hutch.services.audit import AdminLog, entry_hash, load_public_key, load_signing_key
from hutch.services.audit_verify import verify
from hutch.services.clock import FakeClock

N = 10
EVERY = 4  # checkpoints at 4 and 8


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def alog(clock: FakeClock, key: Ed25519PrivateKey) -> AdminLog:
    return AdminLog(clock, key, checkpoint_every=EVERY)


def fill(db: Database, alog: AdminLog, clock: FakeClock, n: int = N) -> None:
    for i in range(n):
        with db.session() as s:
            alog.record(
                s,
                actor_user_id="usr_a",
                action="key.create",
                target_type="api_key",
                target_id=f"key_{i}",
                source_ip="127.0.0.1",
                details={"name": f"k{i}", "note": "ünïcode"},
            )
            s.commit()
        clock.advance(60)


def problems(db: Database, alog: AdminLog) -> list[str]:
    with db.session() as s:
        return verify(s, alog.public_key).problems


def rechain(db: Database, start: int) -> None:
    """What a forger who can write the database does: recompute every hash from `start` on."""
    with db.session() as s:
        prev = s.get(AdminLogRow, start - 1)
        prev_hash = prev.hash if prev else "0" * 64
        for row in s.scalars(
            select(AdminLogRow).where(AdminLogRow.seq >= start).order_by(AdminLogRow.seq)
        ):
            row.prev_hash = prev_hash
            row.hash = entry_hash(row)
            prev_hash = row.hash
        last = s.scalars(select(AdminLogRow).order_by(AdminLogRow.seq.desc())).first()
        assert last is not None
        s.execute(update(AdminLogHeadRow).values(seq=last.seq, hash=last.hash))
        s.commit()


def test_an_untouched_log_verifies(database: Database, alog: AdminLog, clock: FakeClock) -> None:
    fill(database, alog, clock)
    with database.session() as s:
        v = verify(s, alog.public_key)
        rows = list(s.scalars(select(AdminLogRow).order_by(AdminLogRow.seq)))
        cps = [c.seq for c in s.scalars(select(AdminLogCheckpointRow))]
    assert v.ok, v.problems
    assert (v.entries, v.first_seq, v.last_seq, v.latest_checkpoint_seq) == (N, 1, N, 8)
    assert sorted(cps) == [4, 8]
    assert [r.seq for r in rows] == list(range(1, N + 1))
    assert rows[0].at + timedelta(seconds=60) == rows[1].at  # the injected clock
    assert rows[3].details == {"name": "k3", "note": "ünïcode"}


def test_verify_catches_an_edited_entry(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock)
    with database.session() as s:
        s.execute(update(AdminLogRow).where(AdminLogRow.seq == 5).values(source_ip="10.9.9.9"))
        s.commit()
    assert any("entry 5 was altered" in p for p in problems(database, alog))
    # Recomputing the chain after the edit hides it from the hashes, not from checkpoint 8.
    rechain(database, 5)
    found = problems(database, alog)
    assert found and all("altered" not in p for p in found)
    assert any("entry 8 differs from what its signed checkpoint vouches" in p for p in found)


def test_verify_catches_a_deleted_entry(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock)
    with database.session() as s:
        s.execute(delete(AdminLogRow).where(AdminLogRow.seq == 6))
        s.commit()
    assert any("entries 6..6 are missing" in p for p in problems(database, alog))


def test_verify_catches_an_inserted_entry(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock)
    with database.session() as s:
        for seq in range(N, 4, -1):  # make room at 5, highest first (primary key)
            s.execute(update(AdminLogRow).where(AdminLogRow.seq == seq).values(seq=seq + 1))
        forged = s.get(AdminLogRow, 4)
        assert forged is not None
        s.add(
            AdminLogRow(
                seq=5,
                id="aud_forged",
                at=forged.at,
                actor_user_id="usr_evil",
                action="key.create",
                target_type="api_key",
                target_id="key_evil",
                source_ip=None,
                details={},
                prev_hash=forged.hash,
                hash="",
            )
        )
        s.commit()
    rechain(database, 5)  # a careful forger: every link and hash is consistent again
    assert any("entry 8 differs from what its signed" in p for p in problems(database, alog))


def test_verify_catches_reordered_entries(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock)
    with database.session() as s:
        s.execute(update(AdminLogRow).where(AdminLogRow.seq == 6).values(seq=-6))
        s.execute(update(AdminLogRow).where(AdminLogRow.seq == 7).values(seq=6))
        s.execute(update(AdminLogRow).where(AdminLogRow.seq == -6).values(seq=7))
        s.commit()
    found = problems(database, alog)
    assert any("entry 6 does not link to entry 5" in p for p in found)
    assert any("entry 6 was altered" in p for p in found)


def test_verify_catches_truncation_through_the_latest_checkpoint(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock)
    with database.session() as s:
        s.execute(delete(AdminLogRow).where(AdminLogRow.seq >= 7))
        last = s.get(AdminLogRow, 6)
        assert last is not None
        s.execute(update(AdminLogHeadRow).values(seq=6, hash=last.hash))  # cover the tracks
        s.commit()
    found = problems(database, alog)
    assert found == ["truncated: a signed checkpoint vouches for entry 8 but the log ends at 6"]


def test_verify_catches_a_forged_or_foreign_checkpoint(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock)
    with database.session() as s:
        s.execute(
            update(AdminLogCheckpointRow).where(AdminLogCheckpointRow.seq == 8).values(seq=20)
        )
        s.commit()
    assert any("checkpoint at seq 20: signature invalid" in p for p in problems(database, alog))
    other = Ed25519PrivateKey.generate().public_key()
    with database.session() as s:
        assert not verify(s, other).ok


def test_pruning_keeps_the_rest_verifiable(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock, 6)
    clock.advance(400 * 86400)
    fill(database, alog, clock, 3)
    with database.session() as s:
        assert alog.prune(s, older_than=timedelta(days=365)) == 6
    with database.session() as s:
        v = verify(s, alog.public_key)
        seqs = [r.seq for r in s.scalars(select(AdminLogRow).order_by(AdminLogRow.seq))]
        pruned = s.scalars(select(AdminLogRow).where(AdminLogRow.action == "audit.prune")).one()
    assert v.ok, v.problems
    assert seqs == [7, 8, 9, 10] and pruned.details["deleted"] == "6"
    assert v.first_seq == 7
    # The anchor is what makes the rest verifiable: without it the start is unexplained.
    with database.session() as s:
        s.execute(delete(AdminLogCheckpointRow).where(AdminLogCheckpointRow.seq == 6))
        s.commit()
    assert any("no signed checkpoint anchors" in p for p in problems(database, alog))


def test_pruning_nothing_young_is_a_no_op(
    database: Database, alog: AdminLog, clock: FakeClock
) -> None:
    fill(database, alog, clock, 3)
    with database.session() as s:
        assert alog.prune(s, older_than=timedelta(days=365)) == 0
    assert problems(database, alog) == []


def test_concurrent_writers_keep_one_chain(database: Database, alog: AdminLog) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(15):
                with database.session() as s:
                    alog.record(
                        s,
                        actor_user_id=f"usr_{n}",
                        action="member.add",
                        target_type="team",
                        target_id=f"team_{i}",
                        source_ip=None,
                    )
                    s.commit()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with database.session() as s:
        v = verify(s, alog.public_key)
    assert v.ok, v.problems
    assert (v.entries, v.last_seq) == (60, 60)


def test_a_rolled_back_action_leaves_no_entry(database: Database, alog: AdminLog) -> None:
    with database.session() as s:
        alog.record(
            s, actor_user_id=None, action="x", target_type="t", target_id="1", source_ip=None
        )
        s.rollback()
    with database.session() as s:
        assert s.scalars(select(AdminLogRow)).all() == []


def test_signing_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "audit-signing.key"
    first = load_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_signing_key(path)
    pub = load_public_key(path.with_name(path.name + ".pub"))
    raw = first.public_key().public_bytes_raw()
    assert again.public_key().public_bytes_raw() == raw == pub.public_bytes_raw()
    assert load_public_key(path).public_bytes_raw() == raw
