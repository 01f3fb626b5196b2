"""The runner's bookkeeping: which sandboxes exist, their state on disk, timeouts, reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from pydantic import BaseModel

from hutch.config import RunnerSettings
from hutch.ids import new_id
from hutch.models import (
    ErrorCode,
    HutchError,
    IsolationClass,
    NetworkPolicy,
    RunnerCreate,
    RunnerEvent,
    SandboxInfo,
    SandboxState,
    SandboxStats,
    StateEvent,
    UsageHeartbeat,
)
from hutch.runner.fsconfine import replace_file
from hutch.runner.fsflags import spread_subdirectories
from hutch.runner.processes import ProcessTable
from hutch.runtime.base import Runtime, SandboxPlan
from hutch.runtime.network.egress import Egress, LiveSandbox
from hutch.runtime.templates import TemplateStore

log = structlog.get_logger("hutch.runner")
UID_RANGE = 65536
TOMBSTONES = 10000


def utcnow() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


class SandboxRecord(BaseModel):
    """What the runner writes to disk before acting on a sandbox (`record.json`)."""

    sandbox_id: str
    template: str
    isolation: IsolationClass
    vcpu: int
    memory_mb: int
    disk_mb: int
    env: dict[str, str]
    slot: int
    uid_base: int
    template_layers: list[str]
    state: SandboxState
    created_at: datetime
    expires_at: datetime
    last_heartbeat: datetime | None = None
    network: NetworkPolicy | None = None

    def info(self) -> SandboxInfo:
        """Wire view."""
        return SandboxInfo(
            sandbox_id=self.sandbox_id,
            template=self.template,
            isolation=self.isolation,
            vcpu=self.vcpu,
            memory_mb=self.memory_mb,
            disk_mb=self.disk_mb,
            state=self.state,
            created_at=self.created_at,
            expires_at=self.expires_at,
            network=self.network,
        )


@dataclass
class Sandbox:
    """A sandbox the runner manages right now."""

    record: SandboxRecord
    plan: SandboxPlan
    processes: ProcessTable | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SandboxManager:
    """Creates, tracks, expires and destroys sandboxes; reconciles disk and host on start."""

    def __init__(
        self,
        settings: RunnerSettings,
        runtimes: dict[IsolationClass, Runtime],
        templates: TemplateStore,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.runtimes = runtimes
        self.templates = templates
        self.clock = clock
        self.dir = settings.data_dir / "sandboxes"
        self.sandboxes: dict[str, Sandbox] = {}
        self.tombstones: OrderedDict[str, tuple[datetime, str]] = OrderedDict()
        self._subscribers: set[asyncio.Queue[RunnerEvent]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.egress = Egress(
            settings.network_tag(),
            settings.network_pool,
            settings.network_proxy_port,
            settings.network_dns,
            tuple(settings.network_forbidden),
        )

    # ------------------------------------------------------------------ life of the runner

    async def start(self) -> None:
        """Prepare directories, reconcile with the host, start the timers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        spread_subdirectories(self.dir)
        await self.reconcile()
        self._tasks = [
            asyncio.create_task(self._expiry_loop()),
            asyncio.create_task(self._heartbeat_loop()),
        ]

    async def stop(self) -> None:
        """Stop the timers; sandboxes keep running and are adopted by the next start."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for sb in self.sandboxes.values():
            if sb.processes is not None:
                sb.processes.close()
        await self.egress.close()
        if not self.sandboxes:
            for rt in self.runtimes.values():
                with contextlib.suppress(Exception):  # best effort: stopping must not fail
                    rt.release()

    # ------------------------------------------------------------------ events

    def subscribe(self) -> asyncio.Queue[RunnerEvent]:
        """A queue receiving every event from now on."""
        q: asyncio.Queue[RunnerEvent] = asyncio.Queue(maxsize=100_000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[RunnerEvent]) -> None:
        """Stop delivering to `q`."""
        self._subscribers.discard(q)

    def _emit(self, ev: RunnerEvent) -> None:
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(ev)

    def _state_event(self, sandbox_id: str, state: SandboxState, reason: str | None) -> None:
        self._emit(StateEvent(sandbox_id=sandbox_id, state=state, reason=reason, at=self.clock()))

    # ------------------------------------------------------------------ records

    def _write(self, sb: SandboxRecord) -> None:
        d = self.dir / sb.sandbox_id
        tmp = d / "record.json.tmp"
        data = sb.model_dump_json().encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, d / "record.json")

    def _plan(self, r: SandboxRecord) -> SandboxPlan:
        return SandboxPlan(
            sandbox_id=r.sandbox_id,
            isolation=r.isolation,
            template_layers=tuple(Path(p) for p in r.template_layers),
            vcpu=r.vcpu,
            memory_mb=r.memory_mb,
            disk_mb=r.disk_mb,
            env=r.env,
            uid_base=r.uid_base,
            slot=r.slot,
            state_dir=self.dir / r.sandbox_id,
        )

    def _free_slot(self) -> int:
        used = {sb.record.slot for sb in self.sandboxes.values()}
        for slot in range(self.settings.max_sandboxes):
            if slot not in used:
                return slot
        raise HutchError(
            ErrorCode.capacity_exhausted,
            f"this runner already holds its maximum of {self.settings.max_sandboxes} sandboxes",
        )

    def _runtime(self, isolation: IsolationClass) -> Runtime:
        rt = self.runtimes.get(isolation)
        if rt is None:
            raise HutchError(
                ErrorCode.isolation_unavailable,
                f"isolation class {isolation.value!r} is not offered by this runner; "
                f"available: {', '.join(i.value for i in self.runtimes)}",
            )
        h = rt.health()
        if not h.available:
            raise HutchError(
                ErrorCode.isolation_unavailable,
                f"isolation class {isolation.value!r} is unavailable on this runner: {h.reason}",
            )
        return rt

    def _check_size(self, req: RunnerCreate) -> None:
        s = self.settings
        for name, value, hi in (
            ("vcpu", req.vcpu, s.max_vcpu),
            ("memory_mb", req.memory_mb, s.max_memory_mb),
            ("disk_mb", req.disk_mb, s.max_disk_mb),
        ):
            if value > hi:
                raise HutchError(
                    ErrorCode.invalid_request,
                    f"{name}={value} is more than this runner allows (at most {hi})",
                    errors=[{"loc": [name], "msg": f"must be at most {hi}", "allowed_max": hi}],
                )

    # ------------------------------------------------------------------ operations

    async def create(self, req: RunnerCreate) -> SandboxInfo:
        """Create a sandbox and return once a command can run in it; nothing is left on failure."""
        self._check_size(req)
        runtime = self._runtime(req.isolation)
        wants_link = req.network is not None and not req.network.is_closed()
        if wants_link and not runtime.supports_network:
            runtime.netns_pid(self._plan_stub(req.isolation))  # raises: not offered
        layers = self.templates.layers(req.template)
        sandbox_id = req.sandbox_id or new_id("sbx")
        if sandbox_id in self.sandboxes:
            raise HutchError(ErrorCode.conflict, f"sandbox {sandbox_id} already exists")
        slot = self._free_slot()
        now = self.clock()
        rec = SandboxRecord(
            sandbox_id=sandbox_id,
            template=req.template,
            isolation=req.isolation,
            vcpu=req.vcpu,
            memory_mb=req.memory_mb,
            disk_mb=req.disk_mb,
            env=req.env,
            slot=slot,
            uid_base=self.settings.uid_base + slot * UID_RANGE,
            template_layers=[str(p) for p in layers],
            state=SandboxState.creating,
            created_at=now,
            expires_at=now + timedelta(seconds=req.timeout_s),
            network=req.network,
        )
        plan = self._plan(rec)
        sb = Sandbox(record=rec, plan=plan)
        self.sandboxes[sandbox_id] = sb
        try:
            plan.state_dir.mkdir(mode=0o700)
            self._write(rec)  # persisted before the kernel is touched
            await runtime.create(plan)
            if wants_link and req.network is not None:
                await self._attach(sb, runtime, req.network)
            rec.state = SandboxState.running
            rec.last_heartbeat = rec.created_at
            self._write(rec)
        except BaseException as e:
            self.sandboxes.pop(sandbox_id, None)
            with contextlib.suppress(Exception):
                await self.egress.detach(slot)
            with contextlib.suppress(Exception):
                await runtime.destroy(plan)
            shutil.rmtree(plan.state_dir, ignore_errors=True)
            log.warning("sandbox_create_failed", sandbox_id=sandbox_id, error=type(e).__name__)
            raise
        sb.processes = ProcessTable(runtime, plan)
        log.info("sandbox_created", sandbox_id=sandbox_id, isolation=req.isolation.value)
        self._state_event(sandbox_id, SandboxState.running, None)
        return rec.info()

    def get(self, sandbox_id: str) -> Sandbox:
        """A live sandbox, or a typed error that says whether it ever existed."""
        sb = self.sandboxes.get(sandbox_id)
        if sb is not None:
            return sb
        ended = self.tombstones.get(sandbox_id)
        if ended is not None:
            raise HutchError(
                ErrorCode.sandbox_not_running,
                f"sandbox {sandbox_id} is no longer running ({ended[1]} at {ended[0].isoformat()})",
            )
        raise HutchError(ErrorCode.sandbox_not_found, f"sandbox {sandbox_id} does not exist")

    def running(self, sandbox_id: str) -> Sandbox:
        """A sandbox that can run commands now."""
        sb = self.get(sandbox_id)
        if sb.record.state != SandboxState.running or sb.processes is None:
            raise HutchError(
                ErrorCode.sandbox_not_running,
                f"sandbox {sandbox_id} is {sb.record.state.value}, not running",
            )
        return sb

    def list(self) -> list[SandboxInfo]:
        """Every sandbox on this runner."""
        return [sb.record.info() for sb in self.sandboxes.values()]

    async def kill(self, sandbox_id: str, reason: str = "killed") -> None:
        """Destroy a sandbox; afterwards nothing of it remains on the host."""
        sb = self.get(sandbox_id)
        async with sb.lock:
            if sandbox_id not in self.sandboxes:
                return
            rec = sb.record
            rec.state = SandboxState.stopping
            self._write(rec)  # persisted before acting: a crash now is finished on restart
            self._final_heartbeat(sb)
            if sb.processes is not None:
                sb.processes.close()
            await self.egress.detach(rec.slot)
            await self.runtimes[rec.isolation].destroy(sb.plan)
            await asyncio.to_thread(shutil.rmtree, sb.plan.state_dir, ignore_errors=True)
            self.sandboxes.pop(sandbox_id, None)
            self.tombstones[sandbox_id] = (self.clock(), reason)
            while len(self.tombstones) > TOMBSTONES:
                self.tombstones.popitem(last=False)
        log.info("sandbox_stopped", sandbox_id=sandbox_id, reason=reason)
        self._state_event(sandbox_id, SandboxState.stopped, reason)

    async def set_timeout(self, sandbox_id: str, timeout_s: int) -> SandboxInfo:
        """Move the absolute deadline to `timeout_s` seconds from now."""
        sb = self.running(sandbox_id)
        sb.record.expires_at = self.clock() + timedelta(seconds=timeout_s)
        self._write(sb.record)
        return sb.record.info()

    async def stats(self, sandbox_id: str) -> SandboxStats:
        """Live resource use, network bytes included."""
        sb = self.running(sandbox_id)
        st = await self.runtimes[sb.record.isolation].stats(sb.plan)
        tx, rx = await self.egress.counters(sb.record.slot)
        return st.model_copy(update={"net_tx_bytes": tx, "net_rx_bytes": rx})

    async def _attach(self, sb: Sandbox, rt: Runtime, policy: NetworkPolicy) -> None:
        """Give the sandbox its link and point its resolv.conf at its resolver."""
        plan = sb.plan
        await self.egress.attach(plan.sandbox_id, plan.slot, rt.netns_pid(plan), policy)
        gateway = self.egress.link(plan.slot).gateway
        try:
            conf = f"nameserver {gateway}\n".encode()
            root = rt.root_path(plan)
            await asyncio.to_thread(replace_file, root, "etc/resolv.conf", conf, plan.uid_base)
        except BaseException:
            await self.egress.detach(plan.slot)
            raise

    async def set_network(self, sandbox_id: str, policy: NetworkPolicy) -> SandboxInfo:
        """Replace the egress policy of a running sandbox; applies to new connections at once
        and cuts existing ones it no longer allows."""
        sb = self.running(sandbox_id)
        async with sb.lock:
            if self.sandboxes.get(sandbox_id) is not sb:  # killed while we waited
                raise HutchError(
                    ErrorCode.sandbox_not_running, f"sandbox {sandbox_id} is no longer running"
                )
            rt = self.runtimes[sb.record.isolation]
            slot = sb.record.slot
            before = sb.record.network
            sb.record.network = policy
            self._write(sb.record)  # persisted first: a crash now restarts with the new policy
            try:
                if slot in self.egress.attached:
                    await self.egress.update(slot, policy)
                elif not policy.is_closed():
                    await self._attach(sb, rt, policy)  # refused by runtimes without the seam
            except BaseException:
                sb.record.network = before
                self._write(sb.record)
                raise
        log.info("sandbox_network_set", sandbox_id=sandbox_id)
        return sb.record.info()

    # ------------------------------------------------------------------ timers

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = self.clock()
            for sb in list(self.sandboxes.values()):
                r = sb.record
                if r.state == SandboxState.running and r.expires_at <= now:
                    with contextlib.suppress(HutchError):
                        await self.kill(r.sandbox_id, reason="timeout")
                elif r.state == SandboxState.running and sb.processes is not None:
                    sb.processes.prune()

    def _final_heartbeat(self, sb: Sandbox) -> None:
        self._heartbeat(sb, final=True)

    def _heartbeat(self, sb: Sandbox, final: bool = False) -> None:
        r = sb.record
        now = self.clock()
        start = r.last_heartbeat or r.created_at
        cpu = 0
        with contextlib.suppress(Exception):
            cg = getattr(self.runtimes[r.isolation], "cgroups", None)
            if cg is not None:
                cpu = cg.usage(r.sandbox_id).cpu_time_us
        self._emit(
            UsageHeartbeat(
                sandbox_id=r.sandbox_id,
                vcpu=r.vcpu,
                memory_mb=r.memory_mb,
                window_start=start,
                window_end=now,
                cpu_time_us=cpu,
                final=final,
            )
        )
        r.last_heartbeat = now

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            for sb in list(self.sandboxes.values()):
                if sb.record.state == SandboxState.running:
                    self._heartbeat(sb)
                    with contextlib.suppress(OSError):
                        self._write(sb.record)

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self) -> None:
        """Bring disk and host into agreement: adopt what still runs, clean everything else."""
        adopted, cleaned = 0, 0
        for d in sorted(self.dir.iterdir()):
            if not d.is_dir():
                continue
            rec: SandboxRecord | None = None
            with contextlib.suppress(OSError, ValueError):
                rec = SandboxRecord.model_validate(json.loads((d / "record.json").read_text()))
            if rec is not None and rec.state == SandboxState.running:
                rt = self.runtimes.get(rec.isolation)
                plan = self._plan(rec)
                if rt is not None and await rt.is_alive(plan):
                    sb = Sandbox(record=rec, plan=plan, processes=ProcessTable(rt, plan))
                    self.sandboxes[rec.sandbox_id] = sb
                    adopted += 1
                    continue
            await self._clean_dir(d, rec)
            cleaned += 1
            if rec is not None:
                self._state_event(rec.sandbox_id, SandboxState.stopped, "lost")
        # links, rules and listeners: kept for adopted sandboxes, removed for everything else
        live = []
        for sb in self.sandboxes.values():
            net = sb.record.network
            if net is not None and not net.is_closed():
                with contextlib.suppress(HutchError):
                    pid = self.runtimes[sb.record.isolation].netns_pid(sb.plan)
                    live.append(LiveSandbox(sb.record.sandbox_id, sb.record.slot, pid, net))
        await self.egress.reconcile(live)
        # cgroups of sandboxes that have no directory at all (crash between steps)
        for rt in self.runtimes.values():
            cg = getattr(rt, "cgroups", None)
            if cg is None or not rt.health().available:
                continue
            for sid in cg.list_ids() - set(self.sandboxes):
                with contextlib.suppress(OSError):
                    cg.remove(sid)
        log.info("reconciled", adopted=adopted, cleaned=cleaned)

    def _plan_stub(self, isolation: IsolationClass, d: Path | None = None) -> SandboxPlan:
        return SandboxPlan(
            sandbox_id=d.name if d else "",
            isolation=isolation,
            template_layers=(),
            vcpu=1,
            memory_mb=128,
            disk_mb=64,
            env={},
            uid_base=0,
            slot=-1,
            state_dir=d or self.dir,
        )

    async def _clean_dir(self, d: Path, rec: SandboxRecord | None) -> None:
        if rec is not None:
            plan = self._plan(rec)
            runtimes = [self.runtimes[rec.isolation]] if rec.isolation in self.runtimes else []
        else:
            plan = self._plan_stub(IsolationClass.namespace, d)
            runtimes = list(self.runtimes.values())
        for rt in runtimes:
            with contextlib.suppress(Exception):
                await rt.destroy(plan)
        shutil.rmtree(d, ignore_errors=True)
