"""Sandboxes: quota, rate limit and the persisted life cycle around the runner's work.

Every state transition is committed before the runner is asked to act, so a crash at any point
leaves a row the reconciler can bring back into agreement with the runner.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast, overload

import anyio
import structlog
from anyio import to_thread
from sqlalchemy import Table, bindparam, exists, func, insert, literal_column, select, update
from sqlalchemy.orm import Session

from hutch.db.models import ProjectRow, SandboxMetadataRow, SandboxRow
from hutch.db.privacy import SandboxOwnerRow
from hutch.db.raw import Transaction, WouldWait, holding, waiting_allowed, without_waiting
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.api import Mode, Page, Sandbox, SandboxCreate, Scope
from hutch.models.common import ErrorCode, HutchError, IsolationClass, SandboxState
from hutch.models.events import StateEvent
from hutch.models.network import NetworkPolicy
from hutch.models.privacy import secret_pairs
from hutch.models.sandbox import RunnerCreate, SandboxInfo, SandboxStats, SetTimeout, check_env
from hutch.services.clock import Clock
from hutch.services.idempotency import Claim, IdempotencyService, Stored
from hutch.services.pagination import paginate
from hutch.services.permissions import Principal
from hutch.services.ratelimit import TokenBucket
from hutch.services.runner_port import RunnerPort
from hutch.services.suspensions import check_not_suspended, refuse_if_suspended

log = structlog.get_logger("hutch.sandboxes")
T = TypeVar("T")
_SANDBOXES = cast(Table, SandboxRow.__table__)
_SANDBOX_METADATA = cast(Table, SandboxMetadataRow.__table__)
_SANDBOX_OWNERS = cast(Table, SandboxOwnerRow.__table__)

ACTIVE = (SandboxState.creating.value, SandboxState.running.value, SandboxState.stopping.value)
TERMINAL = (SandboxState.stopped.value, SandboxState.failed.value)


# Statements of the create path, built once (building one costs more than running it); bind
# names differ from column names, which INSERT and UPDATE reserve for their values.
def _state_in(states: Sequence[str]) -> Any:
    """`state IN ('a', 'b')` with the states written into the SQL: they are constants, and an
    IN list of bound values is expanded anew at every run."""
    assert all(st in SandboxState._value2member_map_ for st in states)
    return _SANDBOXES.c.state.in_([literal_column(f"'{st}'") for st in states])


_LOCK_PROJECT = (
    select(ProjectRow.id).where(ProjectRow.id == bindparam("p_project")).with_for_update()
)
_COUNT_ACTIVE = (
    select(func.count())
    .select_from(_SANDBOXES)
    .where(
        _SANDBOXES.c.project_id == bindparam("p_project"),
        _state_in(ACTIVE),
    )
)
_GET_SANDBOX = select(_SANDBOXES).where(
    _SANDBOXES.c.id == bindparam("p_id"),
    _SANDBOXES.c.project_id == bindparam("p_project"),
    _SANDBOXES.c.mode == bindparam("p_mode"),
)
_GET_METADATA = select(_SANDBOX_METADATA.c.key, _SANDBOX_METADATA.c.value).where(
    _SANDBOX_METADATA.c.sandbox_id == bindparam("p_id")
)
_INSERT_SANDBOX = insert(_SANDBOXES)
_INSERT_METADATA = insert(_SANDBOX_METADATA)
_INSERT_OWNER = insert(_SANDBOX_OWNERS)
_TRANSITIONS: dict[tuple[tuple[str, ...], tuple[str, ...], bool], Any] = {}


def _transition_stmt(allowed: tuple[str, ...], columns: tuple[str, ...], tenant: bool) -> Any:
    """`UPDATE sandboxes SET <columns> WHERE id = :p_id AND state IN <allowed> [AND tenant]
    RETURNING project_id, mode`, built once per shape."""
    shape = (allowed, columns, tenant)
    stmt = _TRANSITIONS.get(shape)
    if stmt is None:
        c = _SANDBOXES.c
        stmt = update(_SANDBOXES).where(c.id == bindparam("p_id"), _state_in(allowed))
        if tenant:
            stmt = stmt.where(c.project_id == bindparam("p_project"), c.mode == bindparam("p_mode"))
        stmt = stmt.values({col: bindparam(f"v_{col}") for col in columns}).returning(
            c.project_id, c.mode
        )
        _TRANSITIONS[shape] = stmt  # a handful of shapes: one per state and the columns it sets
    return stmt


QUOTA_RETRY_AFTER_S = 5
CREATED = 201  # the status of a create's answer, as recorded for an Idempotency-Key
LIVE_MAX = 100_000  # ids remembered as running (about 10 MB at most)
# Decrypts named project secrets for a key as {ENV_NAME: value}; values live in memory only.
SecretResolver = Callable[[Principal, Sequence[tuple[str, str]]], dict[str, str]]


@dataclass(frozen=True)
class Limits:
    """Per-project limits on sandboxes."""

    max_concurrent: int
    create_rate_per_minute: int


def to_wire(row: SandboxRow) -> Sandbox:
    """The API view of a sandbox row."""
    values = {col: getattr(row, col) for col in _WIRE_COLUMNS}
    return wire_of(values, {m.key: m.value for m in row.meta})


_WIRE_COLUMNS = (
    "id",
    "project_id",
    "mode",
    "template",
    "isolation",
    "vcpu",
    "memory_mb",
    "disk_mb",
    "state",
    "created_at",
    "expires_at",
    "ended_at",
    "end_reason",
    "network",
)


def wire_of(v: Mapping[Any, Any], metadata: dict[str, str]) -> Sandbox:
    """The API view of a sandbox from its column values."""
    network = v["network"]
    return Sandbox(
        sandbox_id=v["id"],
        project_id=v["project_id"],
        mode=Mode(v["mode"]),
        template=v["template"],
        isolation=IsolationClass(v["isolation"]),
        vcpu=v["vcpu"],
        memory_mb=v["memory_mb"],
        disk_mb=v["disk_mb"],
        state=SandboxState(v["state"]),
        metadata=metadata,
        created_at=v["created_at"],
        expires_at=v["expires_at"],
        ended_at=v["ended_at"],
        end_reason=v["end_reason"],
        network=NetworkPolicy.model_validate(network) if network is not None else None,
    )


@dataclass(frozen=True)
class Admitted:
    """A sandbox row as its create stored it."""

    values: dict[str, Any]
    metadata: dict[str, str]

    @property
    def id(self) -> str:
        return str(self.values["id"])


def sandbox_not_found(sandbox_id: str) -> HutchError:
    """404 for a sandbox that is missing or belongs to someone else (the same answer)."""
    return HutchError(ErrorCode.sandbox_not_found, f"sandbox {sandbox_id} not found")


class SandboxService:
    """Create, find, kill and resize sandboxes on behalf of an API key."""

    def __init__(
        self, db: Database, runner: RunnerPort | None, clock: Clock, limits: Limits
    ) -> None:
        self.db = db
        self.runner = runner
        self.clock = clock
        self.limits = limits
        self.limiter = TokenBucket(limits.create_rate_per_minute, clock)
        self.idempotency = IdempotencyService(db, clock)
        # Ids whose create/kill is under way in this process: the reconciler leaves them alone.
        self.inflight: set[str] = set()
        # Ids this process is stopping: it records their end itself, so the runner's event
        # saying so needs no write.
        self.stopping: set[str] = set()
        # SQLite serialises writers anyway; this lock makes count-then-insert atomic per process
        # (PostgreSQL additionally locks the project row for other processes).
        self._quota_lock = threading.Lock()
        # Sandboxes this process last saw running: id → (project, mode). Tenancy never changes,
        # so the proxy hot path checks it here without a database round trip; every transition
        # away from `running` drops the entry, and the runner itself refuses commands to a
        # sandbox that ended by other means (timeout, another API process).
        self.live: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._live_lock = threading.Lock()
        # Checks run before a create is admitted (a restricted account, credit used up); each
        # may raise.
        self.create_guards: list[Callable[[Principal], None]] = []
        self.secret_resolver: SecretResolver | None = None

    def require_runner(self) -> RunnerPort:
        if self.runner is None:
            raise HutchError(
                ErrorCode.runner_unavailable, "no runner is configured for this server"
            )
        return self.runner

    # --- reads (sync: run in a worker thread by the API) ---

    def _row(self, session: Session, actor: Principal, sandbox_id: str) -> SandboxRow:
        row = session.get(SandboxRow, sandbox_id)
        if row is None or row.project_id != actor.project_id or row.mode != actor.mode.value:
            raise sandbox_not_found(sandbox_id)
        return row

    def get(self, session: Session, actor: Principal, sandbox_id: str) -> Sandbox:
        """One sandbox of the caller's project and mode."""
        actor.require(Scope.sandboxes_read)
        # Core on the session's connection: loading an ORM object (and its metadata through
        # the relationship) costs several times the two indexed reads.
        conn = session.connection()
        params = {"p_id": sandbox_id, "p_project": actor.project_id, "p_mode": actor.mode.value}
        row = conn.execute(_GET_SANDBOX, params).mappings().first()
        if row is None:
            raise sandbox_not_found(sandbox_id)
        meta = conn.execute(_GET_METADATA, params).all()
        return wire_of(row, {k: v for k, v in sorted(meta)})

    def running(self, actor: Principal, sandbox_id: str, scope: Scope) -> SandboxRow:
        """Tenancy and state check before proxying to the runner: the row if it is running."""
        actor.require(scope)
        with self.db.session() as s:
            row = self._row(s, actor, sandbox_id)
            if scope is Scope.sandboxes_write:
                check_not_suspended(s, actor)
        if row.state != SandboxState.running.value:
            raise HutchError(
                ErrorCode.sandbox_not_running, f"sandbox {sandbox_id} is {row.state}, not running"
            )
        self.require_runner()
        self._remember(row.id, row.state, row.project_id, row.mode)
        return row

    def seen_running(self, actor: Principal, sandbox_id: str) -> bool:
        """Whether this process last saw the sandbox running in the caller's project and mode
        (no database round trip; `running` is the authoritative check)."""
        return self.live.get(sandbox_id) == (actor.project_id, actor.mode.value)

    def _remember(self, sandbox_id: str, state: str, project_id: str, mode: str) -> None:
        with self._live_lock:
            if state == SandboxState.running.value:
                self.live[sandbox_id] = (project_id, mode)
                while len(self.live) > LIVE_MAX:
                    self.live.popitem(last=False)
            else:
                self.live.pop(sandbox_id, None)

    def list(
        self,
        session: Session,
        actor: Principal,
        *,
        state: SandboxState | None,
        metadata: Mapping[str, str],
        limit: int,
        cursor: str | None,
    ) -> Page[Sandbox]:
        """Sandboxes of the caller's project and mode, newest first."""
        actor.require(Scope.sandboxes_read)
        stmt = select(SandboxRow).where(
            SandboxRow.project_id == actor.project_id, SandboxRow.mode == actor.mode.value
        )
        if state is not None:
            stmt = stmt.where(SandboxRow.state == state.value)
        for k, v in metadata.items():
            stmt = stmt.where(
                exists().where(
                    SandboxMetadataRow.sandbox_id == SandboxRow.id,
                    SandboxMetadataRow.key == k,
                    SandboxMetadataRow.value == v,
                )
            )
        rows, nxt = paginate(session, stmt, SandboxRow.id, limit=limit, cursor=cursor)
        return Page[Sandbox](items=[to_wire(r) for r in rows], next_cursor=nxt)

    def count_by_state(self, session: Session) -> dict[str, int]:
        """How many sandboxes are in each state (for metrics)."""
        rows = session.execute(select(SandboxRow.state, func.count()).group_by(SandboxRow.state))
        return {state: n for state, n in rows.all()}

    # --- create ---

    def _admit_with_env(
        self, actor: Principal, spec: SandboxCreate, claim: Claim | None
    ) -> tuple[Admitted | Stored, dict[str, str]]:
        """A repeated Idempotency-Key's first answer; else the rate limit, the guards, the
        environment (secrets decrypted only for an admitted account, and before anything is
        persisted: an unknown name leaves nothing behind), then quota and the `creating` row.
        All of it in one go: on the event loop or in one worker thread (see `_database`)."""
        if claim is not None:
            with self.db.raw() as tx:
                stored = self.idempotency.find(tx, claim)
            if stored is not None:
                return stored, {}
        wait = self.limiter.take(actor.project_id)
        if wait is not None:
            raise HutchError(
                ErrorCode.rate_limited,
                f"too many sandboxes created; this project may create "
                f"{self.limits.create_rate_per_minute} per minute",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        try:
            for guard in self.create_guards:
                guard(actor)
            env = self._env(actor, spec)
            return self._admit(actor, spec, claim), env
        except WouldWait:  # done again in a worker thread: that run takes the token
            self.limiter.give_back(actor.project_id)
            raise

    def _admit(self, actor: Principal, spec: SandboxCreate, claim: Claim | None = None) -> Admitted:
        """Check quota and persist the `creating` row (and claim the Idempotency-Key, in the
        same transaction); returns what was stored."""
        now = self.clock.now()
        # Suspension is read with the key, like every other property of the caller: at once
        # after a change through this process, within the principal cache's TTL otherwise.
        refuse_if_suspended(actor.suspended)
        project = {"p_project": actor.project_id}
        values: dict[str, Any] = {
            "id": new_id("sbx"),
            "project_id": actor.project_id,
            "mode": actor.mode.value,
            "template": spec.template,
            "isolation": spec.isolation.value,
            "vcpu": spec.vcpu,
            "memory_mb": spec.memory_mb,
            "disk_mb": spec.disk_mb,
            "timeout_s": spec.timeout_s,
            "state": SandboxState.creating.value,
            "created_at": now,
            "updated_at": now,
            "expires_at": now + timedelta(seconds=spec.timeout_s),
            "network": spec.network.model_dump() if spec.network is not None else None,
        }
        sid = values["id"]
        try:
            # Statements built once, on a DBAPI connection (hutch.db.raw): the ORM session, and
            # even SQLAlchemy's execution layer, cost more than these statements.
            with holding(self._quota_lock), self.db.raw() as tx:
                if claim is not None:  # a concurrent request with the same key: 409 here
                    self.idempotency.take(tx, claim)
                if self.db.dialect != "sqlite":  # SQLite has one writer and no row locks
                    tx.execute(_LOCK_PROJECT, project)
                counted = tx.first(_COUNT_ACTIVE, project)
                active = counted[0] if counted is not None else 0
                if active >= self.limits.max_concurrent:
                    raise HutchError(
                        ErrorCode.quota_exceeded,
                        f"the project already has {active} active sandboxes; at most "
                        f"{self.limits.max_concurrent} may run at once",
                        headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
                    )
                # In flight before the row is visible, so the reconciler never takes it for an
                # interrupted create.
                self.inflight.add(sid)
                tx.execute(_INSERT_SANDBOX, values)
                for k, v in spec.metadata.items():
                    tx.execute(_INSERT_METADATA, {"sandbox_id": sid, "key": k, "value": v})
                tx.execute(_INSERT_OWNER, {"sandbox_id": sid, "user_id": actor.user_id})
        except BaseException:  # nothing was committed (the commit itself may have failed)
            self.inflight.discard(sid)
            raise
        # The row as stored, for the answer (no ORM object: nobody changes it).
        return Admitted(
            values | {"ended_at": None, "end_reason": None}, dict(sorted(spec.metadata.items()))
        )

    def _transition(
        self,
        sandbox_id: str,
        state: SandboxState,
        *,
        only_from: tuple[str, ...] = ACTIVE,
        reason: str | None = None,
        at: datetime | None = None,
        info: SandboxInfo | None = None,
        tenant: Principal | None = None,
    ) -> dict[str, Any] | None:
        """Move a row to `state` if it is in `only_from` (and, given `tenant`, belongs to that
        key's project and mode); returns the changed columns, or None if nothing moved.

        One conditional UPDATE: atomic on both databases (PostgreSQL re-checks the condition
        after taking the row lock) and no read of the row first.
        """
        change = self._change(state, reason=reason, at=at, info=info)
        with self.db.raw() as tx:
            hit = self._apply(tx, sandbox_id, change, only_from=only_from, tenant=tenant)
        if hit is None:
            return None
        self._remember(sandbox_id, state.value, *hit)
        return change

    def _change(
        self,
        state: SandboxState,
        *,
        reason: str | None = None,
        at: datetime | None = None,
        info: SandboxInfo | None = None,
    ) -> dict[str, Any]:
        """The columns a move to `state` sets."""
        now = self.clock.now()
        values: dict[str, Any] = {"state": state.value, "updated_at": now}
        if state.value in TERMINAL:
            values |= {"ended_at": at or now, "end_reason": reason}
        if info is not None and state is SandboxState.running:
            values |= {"created_at": info.created_at, "expires_at": info.expires_at}
        return values

    @staticmethod
    def _apply(
        tx: Transaction,
        sandbox_id: str,
        change: dict[str, Any],
        *,
        only_from: tuple[str, ...],
        tenant: Principal | None = None,
    ) -> tuple[str, str] | None:
        """The conditional UPDATE of `_transition` in `tx`; the row's (project, mode) if it
        moved."""
        allowed = tuple(s for s in only_from if s != change["state"])
        if not allowed:
            return None
        # A statement built once per shape, run on a DBAPI connection (hutch.db.raw): the
        # ORM's bulk-update path, building the statement each time, or SQLAlchemy's execution
        # layer cost more than running it.
        columns = tuple(sorted(change))
        stmt = _transition_stmt(allowed, columns, tenant is not None)
        params = {f"v_{col}": change[col] for col in columns} | {"p_id": sandbox_id}
        if tenant is not None:
            params |= {"p_project": tenant.project_id, "p_mode": tenant.mode.value}
        hit = tx.first(stmt, params)
        return None if hit is None else (hit[0], hit[1])

    def _wire(self, sandbox_id: str) -> Sandbox:
        with self.db.session() as s:
            row = s.get(SandboxRow, sandbox_id)
            if row is None:
                raise sandbox_not_found(sandbox_id)
            self._remember(row.id, row.state, row.project_id, row.mode)
            return to_wire(row)

    def _settle_create(
        self, row: Admitted, info: SandboxInfo, claim: Claim | None = None
    ) -> tuple[Sandbox, bool]:
        """Record the runner's answer to a create (and, for an Idempotency-Key, the answer to
        replay, in the same transaction); returns the sandbox and whether the row was still
        `creating` (False: it was killed meanwhile)."""
        state = SandboxState(info.state)
        change = self._change(state, reason=info.end_reason, at=info.ended_at, info=info)
        only = (SandboxState.creating.value,)
        with self.db.raw() as tx:
            hit = self._apply(tx, row.id, change, only_from=only)
            if hit is not None:
                # The admitted row as it now is, without reading it back.
                wire = wire_of(row.values | change, row.metadata)
                if claim is not None:
                    self.idempotency.record(tx, claim, Stored(CREATED, wire.model_dump_json()))
        if hit is not None:
            self._remember(row.id, state.value, *hit)
            return wire, True
        # No longer `creating`: killed meanwhile, or settled elsewhere. Rare, and done through
        # ORM sessions: in a worker thread.
        if not waiting_allowed():
            raise WouldWait
        if info.state == SandboxState.running.value:
            with self.db.session() as s:
                s.execute(
                    update(_SANDBOXES)
                    .where(
                        _SANDBOXES.c.id == row.id,
                        _SANDBOXES.c.state == SandboxState.running.value,
                    )
                    .values(created_at=info.created_at, expires_at=info.expires_at)
                )
                s.commit()
        wire = self._wire(row.id)
        if claim is not None:
            self.idempotency.complete(claim, Stored(CREATED, wire.model_dump_json()))
        return wire, False

    @overload
    async def create(self, actor: Principal, req: SandboxCreate) -> Sandbox: ...

    @overload
    async def create(
        self, actor: Principal, req: SandboxCreate, claim: Claim
    ) -> Sandbox | Stored: ...

    async def create(
        self, actor: Principal, req: SandboxCreate, claim: Claim | None = None
    ) -> Sandbox | Stored:
        """Admit, persist `creating`, ask the runner, persist `running` (or `failed`).

        With `claim` (an Idempotency-Key), a key seen before gets its first answer back as
        `Stored`; a new one is claimed with the admission and its answer recorded with the
        outcome, or given up if the create fails, so that a retry runs again."""
        actor.require(Scope.sandboxes_write)
        runner = self.require_runner()
        # The environment with decrypted secrets goes only to the runner: never to the row, the
        # idempotency record or a log. Secrets may need a key service: never on the loop.
        inline = not req.secrets
        admitted, env = await self._database(inline, self._admit_with_env, actor, req, claim)
        if isinstance(admitted, Stored):
            return admitted
        sandbox_id = admitted.id
        settled = False
        try:
            create = RunnerCreate(
                sandbox_id=sandbox_id,
                env=env,
                **req.model_dump(exclude={"metadata", "secrets", "env"}),
            )
            try:
                info = await runner.create(create)
            except HutchError as e:
                await to_thread.run_sync(self._fail, sandbox_id, e.code.value)
                raise
            except Exception as e:
                await to_thread.run_sync(self._fail, sandbox_id, ErrorCode.runner_unavailable.value)
                raise HutchError(ErrorCode.runner_unavailable, "the runner did not answer") from e
            wire, moved = await self._database(True, self._settle_create, admitted, info, claim)
            settled = True
            if not moved and wire.state.value in (*TERMINAL, "stopping"):
                # Killed while being created: the runner made it after the kill; undo that.
                await self.kill_on_runner(sandbox_id)
            return wire
        except BaseException:
            if claim is not None and not settled:
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(self.idempotency.abandon, claim)
            raise
        finally:
            self.inflight.discard(sandbox_id)

    async def _database(self, inline: bool, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, database work of the create path: on the event loop if the database
        allows (SQLite) and it needs to wait for nothing; else in a worker thread. With SQLite
        the work (a few hundred microseconds) costs less than the two thread wake-ups of a hop
        to a worker thread and back; `fn` must be safe to run again after `WouldWait`."""
        if inline and self.db.inline:
            try:
                with without_waiting():
                    return fn(*args)
            except WouldWait:
                pass
        return await to_thread.run_sync(fn, *args)

    def _env(self, actor: Principal, req: SandboxCreate) -> dict[str, str]:
        """The sandbox's environment: `env` plus decrypted secrets (names may not clash)."""
        pairs = secret_pairs(req.secrets)
        if not pairs:
            return dict(req.env)
        if self.secret_resolver is None:
            raise HutchError(ErrorCode.invalid_request, "this server has no secrets configured")
        if clash := sorted({e for e, _ in pairs} & req.env.keys()):
            raise HutchError(
                ErrorCode.invalid_request,
                f"{', '.join(clash)} named both in env and in secrets; name each variable once",
                errors=[
                    {"loc": ["body", "secrets"], "field": "secrets", "msg": "clashes with env"}
                ],
            )
        resolved = self.secret_resolver(actor, pairs)
        env = {**req.env, **resolved}
        try:
            check_env(env)
        except ValueError as e:
            raise HutchError(
                ErrorCode.invalid_request,
                str(e),
                errors=[{"loc": ["body", "secrets"], "field": "secrets", "msg": str(e)}],
            ) from None
        return env

    def _fail(self, sandbox_id: str, reason: str) -> None:
        self._transition(sandbox_id, SandboxState.failed, reason=reason)

    # --- kill, timeout, stats ---

    async def kill_on_runner(self, sandbox_id: str) -> None:
        """Ask the runner to kill a sandbox; one it does not have, or has already ended (it keeps
        a tombstone of recent ones), counts as killed."""
        try:
            await self.require_runner().kill(sandbox_id)
        except HutchError as e:
            if e.code not in (ErrorCode.sandbox_not_found, ErrorCode.sandbox_not_running):
                raise

    async def kill(self, actor: Principal, sandbox_id: str) -> None:
        """Persist `stopping`, kill on the runner, persist `stopped` (idempotent)."""
        actor.require(Scope.sandboxes_write)

        def begin() -> bool:
            if self._transition(sandbox_id, SandboxState.stopping, tenant=actor) is not None:
                return True
            with self.db.session() as s:  # not ours (404), or already ended (nothing to do)
                row = self._row(s, actor, sandbox_id)
                if row.state in TERMINAL:
                    return False
            # `stopping` already (a kill under way elsewhere, or interrupted): kill again.
            return True

        if not await to_thread.run_sync(begin):
            return
        self.inflight.add(sandbox_id)
        self.stopping.add(sandbox_id)
        try:
            await self.kill_on_runner(sandbox_id)
            await to_thread.run_sync(
                lambda: self._transition(sandbox_id, SandboxState.stopped, reason="killed")
            )
        finally:
            self.inflight.discard(sandbox_id)
            self.stopping.discard(sandbox_id)

    async def stop(self, sandbox_id: str, reason: str) -> bool:
        """Stop a sandbox on the server's own initiative (e.g. unpaid usage); True if it was
        active. Persisted as `stopping` first, like a kill."""
        moved = await to_thread.run_sync(
            lambda: self._transition(sandbox_id, SandboxState.stopping)
        )
        if moved is None:
            return False
        self.inflight.add(sandbox_id)
        self.stopping.add(sandbox_id)
        try:
            if self.runner is not None:
                await self.kill_on_runner(sandbox_id)
            await to_thread.run_sync(
                lambda: self._transition(sandbox_id, SandboxState.stopped, reason=reason)
            )
        finally:
            self.inflight.discard(sandbox_id)
            self.stopping.discard(sandbox_id)
        log.info("sandbox_stopped_by_server", sandbox_id=sandbox_id, reason=reason)
        return True

    async def set_timeout(self, actor: Principal, sandbox_id: str, req: SetTimeout) -> Sandbox:
        """Set a running sandbox's remaining lifetime."""
        await to_thread.run_sync(self.running, actor, sandbox_id, Scope.sandboxes_write)
        info = await self.require_runner().set_timeout(sandbox_id, req)

        def store() -> Sandbox:
            with self.db.session() as s:
                s.execute(
                    update(_SANDBOXES)
                    .where(
                        _SANDBOXES.c.id == sandbox_id,
                        _SANDBOXES.c.state == SandboxState.running.value,
                    )
                    .values(created_at=info.created_at, expires_at=info.expires_at)
                )
                s.commit()
            return self._wire(sandbox_id)

        return await to_thread.run_sync(store)

    def get_network(self, session: Session, actor: Principal, sandbox_id: str) -> NetworkPolicy:
        """The sandbox's egress policy (an empty policy when it has only loopback)."""
        actor.require(Scope.sandboxes_read)
        row = self._row(session, actor, sandbox_id)
        return NetworkPolicy.model_validate(row.network or {})

    async def set_network(
        self, actor: Principal, sandbox_id: str, policy: NetworkPolicy
    ) -> Sandbox:
        """Replace a running sandbox's egress policy: the runner enforces it first, then the
        row records it (a failed change leaves both as they were)."""
        await to_thread.run_sync(self.running, actor, sandbox_id, Scope.sandboxes_write)
        await self.require_runner().set_network(sandbox_id, policy)

        def store() -> Sandbox:
            with self.db.session() as s:
                row = s.get(SandboxRow, sandbox_id, with_for_update=True)
                if row is None:
                    raise sandbox_not_found(sandbox_id)
                row.network = policy.model_dump()
                row.updated_at = self.clock.now()
                s.commit()
                return to_wire(row)

        wire = await to_thread.run_sync(store)
        log.info("sandbox_network_set", sandbox_id=sandbox_id)
        return wire

    async def stats(self, actor: Principal, sandbox_id: str) -> SandboxStats:
        """Live resource use of a running sandbox."""
        await to_thread.run_sync(self.running, actor, sandbox_id, Scope.sandboxes_read)
        return await self.require_runner().stats(sandbox_id)

    # --- what the runner tells us ---

    def apply_event(self, event: StateEvent) -> bool:
        """Apply a runner state change to the database; True if a row changed."""
        if event.state is SandboxState.creating:
            return False
        only_from: tuple[str, ...] = ACTIVE
        if event.state.value in TERMINAL and event.sandbox_id in self.stopping:
            return False
        if event.state is SandboxState.running:
            if event.sandbox_id in self.live or event.sandbox_id in self.inflight:
                return False  # this process has recorded it, or is about to (with its times)
            only_from = (SandboxState.creating.value,)
        moved = (
            self._transition(
                event.sandbox_id, event.state, only_from=only_from, reason=event.reason, at=event.at
            )
            is not None
        )
        if moved:
            log.info("sandbox_state", sandbox_id=event.sandbox_id, state=event.state.value)
        return moved

    def active_rows(self) -> dict[str, str]:
        """Ids and states of every sandbox the database thinks is alive."""
        with self.db.session() as s:
            rows = s.execute(
                select(SandboxRow.id, SandboxRow.state).where(SandboxRow.state.in_(ACTIVE))
            )
            return dict(rows.all())

    def known(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids the database knows as alive."""
        if not ids:
            return set()
        with self.db.session() as s:
            return set(
                s.scalars(
                    select(SandboxRow.id).where(
                        SandboxRow.id.in_(ids), SandboxRow.state.in_(ACTIVE)
                    )
                )
            )

    def record_running(self, info: SandboxInfo) -> bool:
        """A `creating` row whose sandbox the runner has running moves to `running` with the
        runner's times (reconciler); True if it moved."""
        moved = self._transition(
            info.sandbox_id,
            SandboxState.running,
            only_from=(SandboxState.creating.value,),
            info=info,
        )
        return moved is not None

    def settle(self, sandbox_id: str, state: SandboxState, reason: str) -> bool:
        """Force a row into a terminal state (reconciler); True if it moved."""
        return self._transition(sandbox_id, state, reason=reason) is not None
