"""Keep the database and the runner in agreement: periodic reconciliation and runner events."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import structlog
from anyio import to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from hutch.models.common import HutchError, SandboxState
from hutch.models.events import StateEvent, UsageHeartbeat
from hutch.services.metering import MeteringService
from hutch.services.sandboxes import TERMINAL, SandboxService

log = structlog.get_logger("hutch.reconcile")
USAGE_QUEUE = 100_000
USAGE_BATCH = 1000


@dataclass
class ReconcileReport:
    """What one pass changed."""

    stopped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)  # creates the runner finished, now recorded


class Reconciler:
    """Compares the runner's sandboxes with the database's and settles every difference."""

    def __init__(
        self,
        sandboxes: SandboxService,
        interval_s: float = 30.0,
        metering: MeteringService | None = None,
    ) -> None:
        self.sandboxes = sandboxes
        self.interval_s = interval_s
        self.metering = metering

    async def reconcile_once(self) -> ReconcileReport:
        """One pass. The runner is listed before the database is read, so a sandbox created in
        between is in the database (rows are committed before the runner is asked) and is never
        mistaken for an orphan; creates and kills under way in this process are skipped."""
        svc = self.sandboxes
        runner = svc.require_runner()
        report = ReconcileReport()
        listed = {i.sandbox_id: i for i in await runner.list()}
        db_active = await to_thread.run_sync(svc.active_rows)
        for sandbox_id, state in db_active.items():
            if sandbox_id in svc.inflight:
                continue
            info = listed.get(sandbox_id)
            if info is None or info.state.value in TERMINAL:
                if state == SandboxState.creating.value:
                    target, reason = SandboxState.failed, "create was interrupted"
                elif info is not None:
                    target, reason = info.state, info.end_reason or "ended on the runner"
                else:
                    target, reason = SandboxState.stopped, "the runner no longer has this sandbox"
                if await to_thread.run_sync(svc.settle, sandbox_id, target, reason):
                    (report.failed if target is SandboxState.failed else report.stopped).append(
                        sandbox_id
                    )
            elif state == SandboxState.creating.value and info.state is SandboxState.running:
                # The runner made it but the create never recorded that (cancelled, or its
                # write failed): record it as the runner has it.
                if await to_thread.run_sync(svc.record_running, info):
                    report.running.append(sandbox_id)
            elif state == SandboxState.stopping.value:
                await self._kill(sandbox_id, report)
                await to_thread.run_sync(svc.settle, sandbox_id, SandboxState.stopped, "killed")
        handled = set(db_active)
        alive = [
            i for i, info in listed.items() if info.state.value not in TERMINAL and i not in handled
        ]
        known = await to_thread.run_sync(svc.known, alive)
        for sandbox_id in alive:
            if sandbox_id not in known and sandbox_id not in svc.inflight:
                await self._kill(sandbox_id, report)
        if report.stopped or report.failed or report.killed or report.running:
            log.info(
                "reconciled",
                running=len(report.running),
                stopped=len(report.stopped),
                failed=len(report.failed),
                killed=len(report.killed),
            )
        return report

    async def _kill(self, sandbox_id: str, report: ReconcileReport) -> None:
        try:
            await self.sandboxes.kill_on_runner(sandbox_id)
            report.killed.append(sandbox_id)
        except HutchError as e:
            log.warning("reconcile_kill_failed", sandbox_id=sandbox_id, code=e.code.value)

    async def run_periodically(self) -> None:
        """Reconcile now and then every `interval_s`, logging (not raising) failures."""
        while True:
            try:
                await self.reconcile_once()
            except Exception as e:  # the runner may be restarting; try again next round
                log.warning("reconcile_failed", error=type(e).__name__)
            await anyio.sleep(self.interval_s)

    async def consume_events(self, retry_s: float = 1.0) -> None:
        """Apply the runner's state events as they come; reconnect (and reconcile) on drops.
        Usage heartbeats go to metering through a queue, ingested in batches."""
        svc = self.sandboxes
        send, receive = anyio.create_memory_object_stream[UsageHeartbeat](USAGE_QUEUE)
        async with anyio.create_task_group() as tg:
            if self.metering is not None:
                tg.start_soon(self._ingest_usage, receive)
            while True:
                try:
                    async for event in svc.require_runner().events():
                        if isinstance(event, StateEvent):
                            await to_thread.run_sync(svc.apply_event, event)
                        elif self.metering is not None:
                            await send.send(event)
                except Exception as e:
                    log.warning("runner_events_dropped", error=type(e).__name__)
                await anyio.sleep(retry_s)
                try:
                    # Events may have been missed while disconnected.
                    await self.reconcile_once()
                except Exception as e:
                    log.warning("reconcile_failed", error=type(e).__name__)

    async def _ingest_usage(self, receive: MemoryObjectReceiveStream[UsageHeartbeat]) -> None:
        """Heartbeats that arrived while the previous batch was written go in one transaction."""
        assert self.metering is not None
        async for first in receive:
            batch = [first]
            while len(batch) < USAGE_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            try:
                await to_thread.run_sync(self.metering.ingest, batch)
            except Exception as e:  # e.g. the database restarts: the next heartbeat fills the gap
                log.warning("usage_ingest_failed", error=type(e).__name__, heartbeats=len(batch))
