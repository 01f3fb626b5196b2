"""The database and a real runner are brought back into agreement: reconciler and runner events."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio

from hutch.api.deps import Services
from hutch.ids import new_id
from hutch.models.api import SandboxCreate
from hutch.models.common import SandboxState
from hutch.models.events import StateEvent
from hutch.models.sandbox import SetTimeout
from tests.support.live_runner import LiveRunner
from tests.unit.api.conftest import Client, World


def _get(client: Client, world: World, sandbox_id: str) -> dict:  # type: ignore[type-arg]
    return client.get(f"/v1/sandboxes/{sandbox_id}", headers=world.owner.h).json()


def _create(client: Client, world: World) -> str:
    return str(client.post("/v1/sandboxes", headers=world.owner.h, json={}).json()["sandbox_id"])


def test_sandbox_missing_on_the_runner_is_stopped(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    keep, lost = _create(client, world), _create(client, world)
    runner.vanish(lost)
    report = client.run(svc.reconciler.reconcile_once())
    assert report.stopped == [lost] and report.killed == []
    got = _get(client, world, lost)
    assert got["state"] == "stopped" and "no longer" in got["end_reason"]
    assert _get(client, world, keep)["state"] == "running"


def test_unknown_sandbox_on_the_runner_is_killed(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    known = _create(client, world)
    orphan = new_id("sbx")
    runner.orphan(orphan)
    stopped_in_db = _create(client, world)
    client.delete(f"/v1/sandboxes/{stopped_in_db}", headers=world.owner.h)
    runner.orphan(stopped_in_db)  # the database says stopped, the host still has it
    report = client.run(svc.reconciler.reconcile_once())
    assert sorted(report.killed) == sorted([orphan, stopped_in_db])
    assert runner.sandbox_ids() == {known}


def test_interrupted_create_fails_and_inflight_work_is_left_alone(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    principal = _principal(svc, world)
    # Two rows stuck in `creating` (as after a crash between commit and runner call).
    crashed = svc.sandboxes._admit(principal, SandboxCreate()).id
    svc.sandboxes.inflight.discard(crashed)
    busy = svc.sandboxes._admit(principal, SandboxCreate()).id  # still in flight in this process
    report = client.run(svc.reconciler.reconcile_once())
    assert report.failed == [crashed]
    got = _get(client, world, crashed)
    assert (got["state"], got["end_reason"]) == ("failed", "create was interrupted")
    assert _get(client, world, busy)["state"] == "creating"


def test_create_the_runner_finished_but_nobody_recorded_becomes_running(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    # The row is `creating` and this process is no longer creating it (the request was
    # cancelled, or its last write failed), while the runner has the sandbox running. The
    # runner's own event was skipped as the create's to record.
    sid = svc.sandboxes._admit(_principal(svc, world), SandboxCreate()).id
    runner.orphan(sid)
    svc.sandboxes.inflight.discard(sid)
    report = client.run(svc.reconciler.reconcile_once())
    assert report.running == [sid] and report.killed == [] and report.failed == []
    assert _get(client, world, sid)["state"] == "running"
    assert sid in runner.sandbox_ids()


def test_stuck_stopping_is_finished(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    sbx = _create(client, world)
    svc.sandboxes._transition(sbx, SandboxState.stopping)  # as after a crash mid-kill
    report = client.run(svc.reconciler.reconcile_once())
    assert report.killed == [sbx] and sbx not in runner.sandbox_ids()
    assert _get(client, world, sbx)["state"] == "stopped"


def test_state_events_are_applied(client: Client, world: World, svc: Services) -> None:
    sbx = _create(client, world)
    at = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert svc.sandboxes.apply_event(
        StateEvent(sandbox_id=sbx, state=SandboxState.stopped, reason="timeout", at=at)
    )
    got = _get(client, world, sbx)
    assert (got["state"], got["end_reason"], got["ended_at"]) == (
        "stopped",
        "timeout",
        "2031-05-06T07:08:09Z",
    )
    # A stopped sandbox never comes back to life, and unknown ids are ignored.
    assert not svc.sandboxes.apply_event(
        StateEvent(sandbox_id=sbx, state=SandboxState.running, at=at)
    )
    assert not svc.sandboxes.apply_event(
        StateEvent(sandbox_id=new_id("sbx"), state=SandboxState.failed, at=at)
    )
    assert _get(client, world, sbx)["state"] == "stopped"


def test_event_consumer_applies_events_from_the_runner(
    client: Client, world: World, runner: LiveRunner, svc: Services
) -> None:
    sbx = _create(client, world)

    # The app's own requests run on the same loop, so read the row through the service instead.
    def state() -> tuple[str, str | None]:
        with svc.db.session() as s:
            got = svc.sandboxes.get(s, _principal(svc, world), sbx)
            return got.state.value, got.end_reason

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.reconciler.consume_events)
            # The runner itself ends the sandbox (its deadline passes): only the event says so.
            await runner.set_timeout(sbx, SetTimeout(timeout_s=1))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if (await anyio.to_thread.run_sync(state))[0] == "stopped":
                    break
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    client.run(run())
    got = _get(client, world, sbx)
    assert (got["state"], got["end_reason"]) == ("stopped", "timeout")
    assert sbx not in runner.sandbox_ids()


def _principal(svc: Services, world: World):  # type: ignore[no-untyped-def]
    with svc.db.session() as s:
        return svc.keys.authenticate(s, world.owner.key)
