"""The API application factory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog
from anyio import to_thread
from fastapi import FastAPI

from hutch import __version__
from hutch.api import errors
from hutch.api.deps import Services
from hutch.api.host_router import HostRouter
from hutch.api.metrics import Metrics
from hutch.api.middleware import RequestMiddleware
from hutch.api.port_proxy import PortProxy
from hutch.api.routers import (
    keys,
    ports,
    projects,
    sandbox_proxy,
    sandboxes,
    system,
    teams,
    users,
)
from hutch.api.settings import ApiSettings
from hutch.db.session import Database
from hutch.services.accounts import AccountService
from hutch.services.clock import Clock, SystemClock
from hutch.services.idempotency import IdempotencyService
from hutch.services.keys import KeyService, load_pepper
from hutch.services.ports import PortService, PortTokens, port_secret
from hutch.services.reconcile import Reconciler
from hutch.services.runner_port import RunnerPort
from hutch.services.sandboxes import Limits, SandboxService

log = structlog.get_logger("hutch.api")
PURGE_EVERY_S = 3600.0


def build_services(
    settings: ApiSettings,
    *,
    runner: RunnerPort | None,
    clock: Clock | None = None,
    database: Database | None = None,
) -> Services:
    """Wire the services together (no I/O besides reading or creating the pepper)."""
    clock = clock or SystemClock()
    db = database or Database(settings.db_url())
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pepper_cfg = settings.key_pepper.get_secret_value() if settings.key_pepper else None
    sandboxes_svc = SandboxService(
        db,
        runner,
        clock,
        Limits(settings.max_concurrent_sandboxes, settings.create_rate_per_minute),
    )

    def counts() -> dict[str, int]:
        with db.session() as s:
            return sandboxes_svc.count_by_state(s)

    pepper = load_pepper(settings.data_dir, pepper_cfg)
    keys_svc = KeyService(pepper, clock)
    ports_svc = PortService(db, sandboxes_svc, keys_svc, PortTokens(port_secret(pepper), clock))
    return Services(
        settings=settings,
        db=db,
        clock=clock,
        keys=keys_svc,
        accounts=AccountService(clock),
        sandboxes=sandboxes_svc,
        idempotency=IdempotencyService(db, clock),
        reconciler=Reconciler(sandboxes_svc, settings.reconcile_interval_s),
        runner=runner,
        metrics=Metrics(counts),
        ports=ports_svc,
        port_proxy=PortProxy(ports_svc, sandboxes_svc.require_runner),
    )


async def _purge_idempotency(svc: Services) -> None:
    while True:
        try:
            await to_thread.run_sync(svc.idempotency.purge)
        except Exception as e:
            log.warning("idempotency_purge_failed", error=type(e).__name__)
        await anyio.sleep(PURGE_EVERY_S)


def create_app(
    settings: ApiSettings | None = None,
    *,
    runner: RunnerPort | None = None,
    clock: Clock | None = None,
    database: Database | None = None,
    background: bool = True,
) -> FastAPI:
    """The FastAPI app. Migrations run at start-up; with a runner (and `background`), the
    reconciler and the runner-event consumer run for the app's lifetime."""
    settings = settings or ApiSettings()
    svc = build_services(settings, runner=runner, clock=clock, database=database)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(svc.db.migrate)
        log.info("api_started", version=__version__, pid=os.getpid(), runner=runner is not None)
        async with anyio.create_task_group() as tg:
            if background:
                tg.start_soon(_purge_idempotency, svc)
                tg.start_soon(svc.port_proxy.pool.sweep_periodically)
                if runner is not None:
                    tg.start_soon(svc.reconciler.run_periodically)
                    tg.start_soon(svc.reconciler.consume_events)
            yield
            tg.cancel_scope.cancel()
        await svc.port_proxy.aclose()
        if runner is not None:
            await runner.aclose()

    app = FastAPI(
        title="Hutch API",
        version=__version__,
        description="Isolated sandboxes for AI agents. Errors are application/problem+json.",
        lifespan=lifespan,
    )
    app.state.services = svc
    errors.install(app)
    for module in (system, users, teams, projects, keys, sandboxes, sandbox_proxy, ports):
        app.include_router(module.router)
    app.add_middleware(HostRouter, domain=settings.public_domain, proxy=lambda: svc.port_proxy)
    app.add_middleware(RequestMiddleware, metrics=svc.metrics)
    return app
