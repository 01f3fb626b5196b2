"""The API application factory."""

from __future__ import annotations

import functools
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
from hutch.api.billing_wiring import build_billing
from hutch.api.deps import Services, cached_principal
from hutch.api.fast_exec import FastExec
from hutch.api.host_router import HostRouter
from hutch.api.metrics import Metrics
from hutch.api.middleware import RequestMiddleware
from hutch.api.port_proxy import PortProxy
from hutch.api.routers import (
    admin,
    audit,
    billing,
    keys,
    ports,
    privacy,
    projects,
    sandbox_proxy,
    sandboxes,
    secrets,
    system,
    teams,
    templates,
    users,
)
from hutch.api.settings import ApiSettings
from hutch.db.session import Database
from hutch.services import export_collectors
from hutch.services.accounts import AccountService
from hutch.services.audit import AdminLog, load_signing_key
from hutch.services.authcache import PrincipalCache
from hutch.services.billing.usage import UsageReports
from hutch.services.clock import Clock, SystemClock
from hutch.services.exec_audit import ExecAudit
from hutch.services.idempotency import IdempotencyService
from hutch.services.keys import KeyService, load_pepper
from hutch.services.ports import PortService, PortTokens, port_secret
from hutch.services.privacy import PrivacyService
from hutch.services.reconcile import Reconciler
from hutch.services.retention import register_retention_jobs
from hutch.services.runner_port import RunnerPort
from hutch.services.sandboxes import Limits, SandboxService
from hutch.services.scheduler import Scheduler
from hutch.services.secrets.providers import build_provider
from hutch.services.secrets.service import SecretService
from hutch.services.suspensions import SuspensionService
from hutch.services.usage import UsageLog

log = structlog.get_logger("hutch.api")
BILLING_LEASE = timedelta(minutes=10)  # longer than any billing pass
ERASURE_PURGE_EVERY = timedelta(hours=1)


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
    pepper = load_pepper(settings.data_dir, pepper_cfg)
    sandboxes_svc = SandboxService(
        db,
        runner,
        clock,
        Limits(settings.max_concurrent_sandboxes, settings.create_rate_per_minute),
    )

    auth_cache = PrincipalCache(settings.auth_cache_s, clock)
    auth_cache.watch(db.sessions)
    admin_log = AdminLog(
        clock,
        load_signing_key(settings.audit_key_path()),
        checkpoint_every=settings.audit_checkpoint_every,
    )
    billing = build_billing(settings, db, clock, sandboxes_svc, pepper)
    sandboxes_svc.create_guards.append(billing.check_create)
    accounts = AccountService(clock, admin_log, on_team_created=billing.credits.ensure_account)
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
    secrets_svc = SecretService(db, provider, accounts, clock, admin_log=admin_log.record)
    privacy_svc = PrivacyService(
        db,
        clock,
        sandboxes_svc,
        secrets_svc,
        admin_log=admin_log.record,
        pseudonymise_user=billing.pseudonymise_user,
        grace=timedelta(days=settings.erasure_grace_days),
    )
    export_collectors.register(privacy_svc.exports)  # usage, invoices, credit, admin-log entries
    sandboxes_svc.secret_resolver = secrets_svc.env_for
    sandboxes_svc.create_guards.append(privacy_svc.guard_create)

    def counts() -> dict[str, int]:
        with db.session() as s:
            return sandboxes_svc.count_by_state(s)

    idempotency = IdempotencyService(db, clock)
    usage = UsageLog(db, clock, retention=timedelta(days=settings.usage_retention_days))
    scheduler = Scheduler(db, clock)
    register_retention_jobs(
        scheduler,
        db=db,
        admin_log=admin_log,
        usage=usage,
        idempotency=idempotency,
        audit_retention=timedelta(days=settings.audit_retention_days),
    )
    scheduler.register(
        "erasure_purge", ERASURE_PURGE_EVERY, lambda: privacy_svc.purge_due(clock.now())
    )
    # Enforcement, usage reporting and invoicing: once per interval across all API processes.
    scheduler.register(
        "billing", timedelta(seconds=settings.billing_interval_s), billing.tick, lease=BILLING_LEASE
    )
    keys_svc = KeyService(pepper, clock, admin_log)
    ports_svc = PortService(db, sandboxes_svc, keys_svc, PortTokens(port_secret(pepper), clock))
    services = Services(
        settings=settings,
        db=db,
        clock=clock,
        keys=keys_svc,
        accounts=accounts,
        sandboxes=sandboxes_svc,
        idempotency=idempotency,
        reconciler=Reconciler(
            sandboxes_svc, settings.reconcile_interval_s, metering=billing.metering
        ),
        runner=runner,
        metrics=Metrics(counts),
        auth_cache=auth_cache,
        billing=billing,
        usage=UsageReports(billing, billing.credits.prices),
        admin_log=admin_log,
        usage_log=usage,
        scheduler=scheduler,
        exec_audit=ExecAudit(db, clock),
        suspensions=SuspensionService(clock, admin_log, sandboxes_svc),
        secrets=secrets_svc,
        privacy=privacy_svc,
        ports=ports_svc,
        port_proxy=PortProxy(ports_svc, sandboxes_svc.require_runner),
    )
    services.port_proxy.cached_key = functools.partial(cached_principal, services)
    return services


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
                tg.start_soon(svc.scheduler.run_forever, settings.scheduler_tick_s)
                tg.start_soon(svc.usage_log.run_flusher)
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
    routers = (system, users, teams, projects, keys, sandboxes, sandbox_proxy, templates)
    for module in (*routers, ports, billing, audit, admin, privacy, secrets):
        app.include_router(module.router)
    if settings.fast_exec:
        app.add_middleware(FastExec, services=lambda: svc)
    app.add_middleware(HostRouter, domain=settings.public_domain, proxy=lambda: svc.port_proxy)
    app.add_middleware(RequestMiddleware, metrics=svc.metrics, usage=svc.usage_log)
    return app
