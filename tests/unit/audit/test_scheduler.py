"""The scheduler: two instances on one database run each job once per due time."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import anyio
import pytest

from hutch.db.session import Database
from hutch.services.clock import FakeClock
from hutch.services.scheduler import Scheduler

HOUR = timedelta(hours=1)


def two(database: Database, clock: FakeClock) -> tuple[Scheduler, Scheduler, Counter[str]]:
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    def job(name: str):  # type: ignore[no-untyped-def]
        def run() -> None:
            with lock:
                runs[name] += 1

        return run

    a = Scheduler(database, clock, owner="a")
    b = Scheduler(database, clock, owner="b")
    for s in (a, b):
        s.register("hourly", HOUR, job("hourly"))
        s.register("daily", timedelta(days=1), job("daily"))
    return a, b, runs


def test_two_instances_run_each_job_once_per_due_time(database: Database) -> None:
    clock = FakeClock()
    a, b, runs = two(database, clock)
    assert anyio.run(a.run_due) == ["hourly", "daily"]
    assert anyio.run(b.run_due) == []
    assert runs == {"hourly": 1, "daily": 1}
    clock.advance(30 * 60)
    assert anyio.run(a.run_due) == anyio.run(b.run_due) == []
    clock.advance(30 * 60)
    assert anyio.run(b.run_due) == ["hourly"]
    assert anyio.run(a.run_due) == []
    assert runs == {"hourly": 2, "daily": 1}


def test_two_instances_ticking_at_the_same_moment(database: Database) -> None:
    clock = FakeClock()
    a, b, runs = two(database, clock)
    ran: Counter[str] = Counter()
    for _ in range(12):
        start = threading.Barrier(2)

        def tick(s: Scheduler, start: threading.Barrier = start) -> None:
            start.wait()
            for name in anyio.run(s.run_due):
                ran[s.owner] += 1
                assert name

        threads = [threading.Thread(target=tick, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        clock.advance(3600)
    assert runs == {"hourly": 12, "daily": 1}
    assert sum(ran.values()) == 13


def test_a_running_job_is_not_started_again_and_a_dead_lease_expires(database: Database) -> None:
    clock = FakeClock()
    started = threading.Event()
    release = threading.Event()
    count = Counter[str]()

    def slow() -> None:
        count["slow"] += 1
        started.set()
        assert release.wait(30)

    a = Scheduler(database, clock, owner="a")
    b = Scheduler(database, clock, owner="b")
    for s in (a, b):
        s.register("slow", HOUR, slow, lease=timedelta(hours=3))
    t = threading.Thread(target=lambda: anyio.run(a.run_due))
    t.start()
    assert started.wait(30)
    clock.advance(2 * 3600)  # due again, but a still holds the lease
    assert anyio.run(b.run_due) == []
    release.set()
    t.join()
    assert count["slow"] == 1
    # A claim whose process died: its lease runs out and another process takes the job.
    clock.advance(3600)
    assert a._claim(a.jobs["slow"])
    clock.advance(2 * 3600)
    assert anyio.run(b.run_due) == []
    clock.advance(3600 + 60)
    assert anyio.run(b.run_due) == ["slow"]
    assert count["slow"] == 2


def test_a_failing_job_is_retried_sooner(database: Database) -> None:
    clock = FakeClock()
    calls = []

    def boom() -> None:
        calls.append(clock.now())
        raise RuntimeError("nope")

    s = Scheduler(database, clock)
    s.register("boom", timedelta(days=1), boom)
    assert anyio.run(s.run_due) == ["boom"]
    clock.advance(5 * 60)
    assert anyio.run(s.run_due) == ["boom"]
    assert len(calls) == 2
    assert [r.last_ok for r in s.status()] == [False]


def test_async_jobs_and_registration_errors(database: Database) -> None:
    clock = FakeClock()
    s = Scheduler(database, clock)
    seen = []

    async def job() -> None:
        seen.append(1)

    s.register("async", HOUR, job)
    with pytest.raises(ValueError, match="already registered"):
        s.register("async", HOUR, job)
    with pytest.raises(ValueError, match="positive"):
        s.register("never", timedelta(0), job)
    assert anyio.run(s.run_due) == ["async"]
    assert seen == [1]
