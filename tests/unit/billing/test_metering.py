"""Heartbeats become usage records: exact, idempotent, gap-filled, late-safe (both databases)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from hutch.db.billing import InvoiceRow, UsageRecordRow
from tests.unit.billing.conftest import T0, Stack, hb

S = timedelta(seconds=1)


def records(stack: Stack, sid: str | None = None) -> list[UsageRecordRow]:
    with stack.db.session() as s:
        stmt = select(UsageRecordRow).order_by(UsageRecordRow.start)
        if sid:
            stmt = stmt.where(UsageRecordRow.sandbox_id == sid)
        return list(s.scalars(stmt))


def billed_ms(stack: Stack, sid: str) -> int:
    return sum(r.duration_ms for r in records(stack, sid))


def test_seconds_times_price_is_exact(stack: Stack) -> None:
    team, project = stack.team()
    sid = stack.sandbox(project, vcpu=2, memory_mb=2048)
    t = T0
    for _ in range(360):  # one hour in 10 s heartbeats
        stack.clock.advance(10)
        stack.metering.ingest([hb(sid, t, t + 10 * S, vcpu=2, memory_mb=2048)])
        t += 10 * S
    assert billed_ms(stack, sid) == 3_600_000
    # 2 vCPU + 2 GiB for an hour = 4 x $0.0205 = $0.082, to the micro-dollar
    with stack.db.session() as s:
        assert stack.credits.ledger(s, team).usage_micros == 82_000
    assert stack.ledger_balance(team) == 50_000_000 - 82_000


def test_sub_second_windows_add_up_without_drift(stack: Stack) -> None:
    _, project = stack.team()
    sid = stack.sandbox(project)
    t = T0
    for _ in range(7):  # 7 x 1.234567 s; milliseconds are floored at absolute times
        stack.metering.ingest([hb(sid, t, t + timedelta(microseconds=1_234_567))])
        t += timedelta(microseconds=1_234_567)
    assert billed_ms(stack, sid) == 8641  # floor(8.641969 s) at the absolute end


def test_replayed_and_overlapping_heartbeats_do_not_double(stack: Stack) -> None:
    _, project = stack.team()
    sid = stack.sandbox(project)
    first = hb(sid, T0, T0 + 10 * S)
    assert stack.metering.ingest([first]) == 1
    assert stack.metering.ingest([first]) == 0  # replay
    assert stack.metering.ingest([hb(sid, T0 + 5 * S, T0 + 15 * S)]) == 1  # overlaps by 5 s
    assert stack.metering.ingest([hb(sid, T0, T0 + 15 * S)]) == 0
    assert billed_ms(stack, sid) == 15_000
    ids = [r.id for r in records(stack, sid)]
    assert ids == [f"{sid}@{T0.isoformat()}", f"{sid}@{(T0 + 10 * S).isoformat()}"]


def test_concurrent_ingest_of_the_same_heartbeat_writes_one_record(stack: Stack) -> None:
    _, project = stack.team()
    sid = stack.sandbox(project)
    stack.metering.ingest([hb(sid, T0, T0 + S)])
    beat = hb(sid, T0 + S, T0 + 11 * S)
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        stack.metering.ingest([beat])

    threads = [threading.Thread(target=go) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert billed_ms(stack, sid) == 11_000


def test_missed_heartbeats_are_filled_and_usage_ends_at_the_final_one(stack: Stack) -> None:
    _, project = stack.team()
    sid = stack.sandbox(project)
    stack.metering.ingest([hb(sid, T0, T0 + 10 * S)])
    # the server was down for [10 s, 40 s): the runner's heartbeats then reached nobody
    stack.metering.ingest([hb(sid, T0 + 40 * S, T0 + 50 * S)])
    stack.metering.ingest([hb(sid, T0 + 50 * S, T0 + 53 * S, final=True)])
    stack.metering.ingest([hb(sid, T0 + 53 * S, T0 + 63 * S)])  # after the end: ignored
    assert billed_ms(stack, sid) == 53_000


def test_usage_ends_at_the_last_heartbeat_when_nothing_more_comes(stack: Stack) -> None:
    _, project = stack.team()
    sid = stack.sandbox(project)
    stack.metering.ingest([hb(sid, T0, T0 + 10 * S)])
    stack.metering.close(sid)  # the runner lost the sandbox; no final heartbeat
    stack.metering.ingest([hb(sid, T0 + 10 * S, T0 + 20 * S)])
    assert billed_ms(stack, sid) == 10_000


def test_records_split_at_midnight(stack: Stack) -> None:
    _, project = stack.team()
    stack.clock.set(datetime(2030, 3, 10, 23, 59, 55, tzinfo=UTC))
    sid = stack.sandbox(project)
    start = stack.clock.now()
    stack.metering.ingest([hb(sid, start, start + 10 * S)])
    recs = records(stack, sid)
    assert [(r.duration_ms, r.start.day) for r in recs] == [(5000, 10), (5000, 11)]


def test_test_mode_usage_is_recorded_but_free(stack: Stack) -> None:
    team, project = stack.team()
    sid = stack.sandbox(project, mode="test", vcpu=16, memory_mb=65536)
    stack.clock.advance(3600)
    stack.metering.ingest([hb(sid, T0, T0 + 3600 * S, vcpu=16, memory_mb=65536)])
    assert [r.mode for r in records(stack, sid)] == ["test"]
    with stack.db.session() as s:
        assert stack.credits.ledger(s, team).usage_micros == 0
    assert stack.ledger_balance(team) == 50_000_000


def test_unknown_sandboxes_are_not_metered(stack: Stack) -> None:
    assert stack.metering.ingest([hb("sbx_nobody", T0, T0 + S)]) == 0


def test_too_late_heartbeats_are_refused(database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.billing.conftest import make_stack

    stack = make_stack(database, tmp_path, late_window_s=3600)
    _, project = stack.team()
    sid = stack.sandbox(project)
    stack.clock.advance(7200)
    assert stack.metering.ingest([hb(sid, T0, T0 + 10 * S)]) == 0
    assert stack.metering.ingest([hb(sid, T0, T0 + 3601 * S)]) == 1


def test_a_finalized_invoice_is_never_rewritten_by_late_records(stack: Stack) -> None:
    team, project = stack.team()
    sid = stack.sandbox(project)
    stack.metering.ingest([hb(sid, T0, T0 + 3600 * S)])
    stack.clock.set(datetime(2030, 3, 31, 23, 0, tzinfo=UTC))
    other = stack.sandbox(project, vcpu=2)
    # into April, past the close delay: March is finalized
    stack.clock.set(datetime(2030, 4, 1, 2, 0, tzinfo=UTC))
    done = stack.invoices.close_due()
    assert [(r.team_id, r.period) for r in done] == [(team, "2030-03")]
    march = done[0]
    assert march.subtotal_micros == 41_000 and march.credits_micros == 41_000
    assert march.total_micros == 0 and march.status == "paid"
    # a late heartbeat about March (within the late window) lands in April, marked late
    stack.metering.ingest(
        [
            hb(
                other,
                datetime(2030, 3, 31, 23, 0, tzinfo=UTC),
                datetime(2030, 4, 1, 1, 0, tzinfo=UTC),
                vcpu=2,
            )
        ]
    )
    late = records(stack, other)
    # its March hour goes to April (late); its April hour is April's anyway
    assert [(r.period, r.late, r.duration_ms) for r in late] == [
        ("2030-04", True, 3_600_000),
        ("2030-04", False, 3_600_000),
    ]
    with stack.db.session() as s:
        again = s.get(InvoiceRow, march.id)
        assert again is not None
        assert (again.subtotal_micros, again.lines) == (march.subtotal_micros, march.lines)
        assert s.scalar(select(func.count()).select_from(InvoiceRow)) == 1
    assert stack.invoices.finalize(team, "2030-03") is None  # once only


def test_model_usage_is_metered_once_per_request_and_priced(stack: Stack) -> None:
    team, project = stack.team()
    kw = dict(team_id=team, project_id=project, mode="live", model="m1")
    assert (
        stack.metering.record_model_usage(
            request_id="req_1", input_tokens=10, output_tokens=5, **kw
        )
        == 2
    )  # type: ignore[arg-type]
    assert (
        stack.metering.record_model_usage(
            request_id="req_1", input_tokens=10, output_tokens=5, **kw
        )
        == 0
    )  # type: ignore[arg-type]
    meters = sorted((r.meter, r.units) for r in records(stack))
    assert meters == [("model:m1:input", 10), ("model:m1:output", 5)]
