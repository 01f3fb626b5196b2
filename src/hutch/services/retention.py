"""The retention and purge jobs every API process registers on the shared scheduler."""

from __future__ import annotations

from datetime import timedelta

from hutch.db.session import Database
from hutch.services.audit import AdminLog
from hutch.services.idempotency import IdempotencyService
from hutch.services.scheduler import Scheduler
from hutch.services.usage import UsageLog

HOUR = timedelta(hours=1)


def register_retention_jobs(
    scheduler: Scheduler,
    *,
    db: Database,
    admin_log: AdminLog,
    usage: UsageLog,
    idempotency: IdempotencyService,
    audit_retention: timedelta,
) -> None:
    """Idempotency purge, usage folding, admin-log checkpoints and pruning."""

    def checkpoint() -> None:
        with db.session() as s:
            admin_log.checkpoint(s)

    def prune() -> None:
        with db.session() as s:
            admin_log.prune(s, older_than=audit_retention)

    scheduler.register("idempotency_purge", HOUR, idempotency.purge)
    scheduler.register("usage_fold", HOUR, usage.fold)
    scheduler.register("admin_log_checkpoint", timedelta(minutes=10), checkpoint)
    scheduler.register("admin_log_prune", timedelta(days=1), prune)
