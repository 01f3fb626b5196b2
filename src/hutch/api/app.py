"""The API application factory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import structlog
from anyio import to_thread
from fastapi import FastAPI

from hutch import __version__
from hutch.api import errors
from hutch.api.deps import Services
from hutch.api.metrics import Metrics
from hutch.api.middleware import RequestMiddleware
from hutch.api.routers import (
    keys,
    privacy,
    projects,
    sandbox_proxy,
    sandboxes,
    secrets,
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
from hutch.services.privacy import PrivacyService
from hutch.services.reconcile import Reconciler
from hutch.services.runner_port import RunnerPort
from hutch.services.sandboxes import Limits, SandboxService
from hutch.services.secrets.providers import build_provider
from hutch.services.secrets.service import SecretService

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

    accounts = AccountService(clock)
    vault_token = settings.vault_token.get_secret_value() if settings.vault_token else None
    provider = build_provider(
        settings.kek_provider,
        data_dir=settings.data_dir,
        kek_file=settings.kek_file,
        vault_addr=settings.vault_addr,
        vault_token=vault_token,
        vault_mount=settings.vault_transit_mount,
        vault_key=settings.vault_transit_key,
        kms_key_id=settings.kms_key_id,
        kms_region=settings.kms_region,
        kms_endpoint_url=settings.kms_endpoint_url,
    )
    secrets_svc = SecretService(db, provider, accounts, clock)
    privacy_svc = PrivacyService(
        db,
        clock,
        sandboxes_svc,
        secrets_svc,
        grace=timedelta(days=settings.erasure_grace_days),
    )
    sandboxes_svc.secret_resolver = secrets_svc.env_for
    sandboxes_svc.create_guards.append(privacy_svc.guard_create)

    def counts() -> dict[str, int]:
        with db.session() as s:
            return sandboxes_svc.count_by_state(s)

    return Services(
        settings=settings,
        db=db,
        clock=clock,
        keys=KeyService(load_pepper(settings.data_dir, pepper_cfg), clock),
        accounts=accounts,
        sandboxes=sandboxes_svc,
        idempotency=IdempotencyService(db, clock),
        reconciler=Reconciler(sandboxes_svc, settings.reconcile_interval_s),
        runner=runner,
        metrics=Metrics(counts),
        secrets=secrets_svc,
        privacy=privacy_svc,
    )


async def _purge_erased_accounts(svc: Services) -> None:
    while True:
        try:
            await to_thread.run_sync(lambda: svc.privacy.purge_due(svc.clock.now()))
        except Exception as e:
            log.warning("erasure_purge_failed", error=type(e).__name__)
        await anyio.sleep(PURGE_EVERY_S)


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
                tg.start_soon(_purge_erased_accounts, svc)
                if runner is not None:
                    tg.start_soon(svc.reconciler.run_periodically)
                    tg.start_soon(svc.reconciler.consume_events)
            yield
            tg.cancel_scope.cancel()
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
    for module in (
        system,
        privacy,
        users,
        teams,
        projects,
        secrets,
        keys,
        sandboxes,
        sandbox_proxy,
    ):
        app.include_router(module.router)
    app.add_middleware(RequestMiddleware, metrics=svc.metrics)
    return app
