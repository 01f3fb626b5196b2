"""The credit ledger: welcome credit, draw order, expiry, balance (both databases)."""

from __future__ import annotations

from datetime import timedelta

from hutch.services.accounts import AccountService
from hutch.services.credits import PAID, PROMOTIONAL
from tests.unit.billing.conftest import T0, Stack, hb

H = timedelta(hours=1)


def burn(stack: Stack, project: str, hours: int, *, vcpu: int = 16, memory_mb: int = 65536) -> str:
    """Run a sandbox for `hours` from now (16 vCPU + 64 GiB cost $1.64 an hour)."""
    sid = stack.sandbox(project, vcpu=vcpu, memory_mb=memory_mb)
    start = stack.clock.now()
    stack.clock.advance(hours * 3600)
    stack.metering.ingest([hb(sid, start, start + hours * H, vcpu=vcpu, memory_mb=memory_mb)])
    return sid


def test_every_new_team_gets_the_welcome_credit_once(stack: Stack) -> None:
    accounts = AccountService(stack.clock, on_team_created=stack.credits.ensure_account)
    with stack.db.session() as s:
        user_id, _ = accounts.bootstrap_owner(s, email="a@example.test", name="a")
        s.commit()
        from hutch.db.models import MemberRow

        team_id = s.query(MemberRow.team_id).filter(MemberRow.user_id == user_id).scalar()
        stack.credits.ensure_account(s, team_id)  # again: no second grant
        s.commit()
        ledger = stack.credits.ledger(s, team_id)
    assert [(g.row.kind, g.row.amount_micros) for g in ledger.grants] == [(PROMOTIONAL, 50_000_000)]
    assert ledger.balance_micros == 50_000_000


def test_usage_draws_by_priority_then_earliest_expiry(stack: Stack) -> None:
    team, project = stack.team(promo=False)
    with stack.db.session() as s:
        stack.credits.ensure_account(s, team)
        late_expiry = stack.credits.grant(
            s, team, amount_micros=1_000_000, kind=PAID, reason="a", expires_at=T0 + 100 * H
        )
        early_expiry = stack.credits.grant(
            s, team, amount_micros=1_000_000, kind=PAID, reason="b", expires_at=T0 + 50 * H
        )
        never = stack.credits.grant(s, team, amount_micros=1_000_000, kind=PAID, reason="c")
        first = stack.credits.grant(
            s, team, amount_micros=1_000_000, kind=PROMOTIONAL, reason="d", priority=1
        )
        s.commit()
    burn(stack, project, 1)  # $1.64: all of `first`, then 0.64 of the earliest expiry
    with stack.db.session() as s:
        ledger = stack.credits.ledger(s, team)
    left = {g.row.id: g.remaining_micros for g in ledger.grants}
    assert left == {
        first.id: 0,
        early_expiry.id: 360_000,
        late_expiry.id: 1_000_000,
        never.id: 1_000_000,
    }
    assert ledger.balance_micros == 4_000_000 - 1_640_000


def test_grants_expire_and_their_rest_is_gone(stack: Stack) -> None:
    team, project = stack.team(promo=False)
    with stack.db.session() as s:
        stack.credits.ensure_account(s, team)
        stack.credits.grant(
            s, team, amount_micros=2_000_000, kind=PROMOTIONAL, reason="x", expires_at=T0 + 2 * H
        )
        s.commit()
    burn(stack, project, 1)  # within the grant's life: covered
    assert stack.ledger_balance(team) == 2_000_000 - 1_640_000
    stack.clock.advance(3 * 3600)  # the grant has expired; its 0.36 left is gone
    assert stack.ledger_balance(team) == 0
    burn(stack, project, 1)  # after expiry: not covered, owed
    with stack.db.session() as s:
        ledger = stack.credits.ledger(s, team)
    assert ledger.covered_micros == 1_640_000
    assert ledger.owed_micros == 1_640_000
    assert ledger.balance_micros == -1_640_000


def test_grants_count_only_from_their_effective_time(stack: Stack) -> None:
    team, project = stack.team(promo=False)
    with stack.db.session() as s:
        stack.credits.ensure_account(s, team)
        stack.credits.grant(
            s, team, amount_micros=5_000_000, kind=PAID, reason="x", effective_at=T0 + 10 * H
        )
        s.commit()
    burn(stack, project, 1)
    assert stack.ledger_balance(team) == -1_640_000  # the grant is not yet in force
    stack.clock.set(T0 + 10 * H)
    assert stack.ledger_balance(team) == 5_000_000 - 1_640_000


def test_an_account_opened_concurrently_gets_one_welcome_grant(stack: Stack) -> None:
    import threading

    team, _ = stack.team(promo=False)
    with stack.db.session() as s:  # a team without an account yet
        from hutch.db.billing import BillingAccountRow

        s.delete(s.get(BillingAccountRow, team))
        s.commit()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_account() -> None:
        barrier.wait()
        try:
            with stack.db.session() as s:
                stack.credits.ensure_account(s, team)
                s.commit()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_account) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with stack.db.session() as s:
        assert [g.row.amount_micros for g in stack.credits.ledger(s, team).grants] == [50_000_000]
