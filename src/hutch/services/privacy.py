"""Data-subject rights: export, rectify, restrict, object, erase, and the purge job.

Erasure blocks access at once (every key revoked, authentication answers `account_erased`),
kills the user's running sandboxes, and leaves the personal data to `purge_due`, which removes it
once the grace period has passed. Billing records stay, pseudonymised by the billing service.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from anyio import to_thread
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hutch.db.models import (
    ApiKeyRow,
    IdempotencyRow,
    MemberRow,
    ProjectRow,
    SandboxRow,
    TeamRow,
    UserRow,
)
from hutch.db.privacy import SandboxOwnerRow, UserPrivacyRow
from hutch.db.session import Database
from hutch.models.api import Role, Scope, User
from hutch.models.common import ErrorCode, HutchError
from hutch.models.privacy import PrivacyStatus, ProfileUpdate, Purpose
from hutch.services.accounts import project_wire, user_wire
from hutch.services.clock import Clock
from hutch.services.export import ExportRegistry
from hutch.services.hooks import AdminLogFn, PseudonymiseFn, noop_admin_log, noop_pseudonymise
from hutch.services.keys import to_wire as key_wire
from hutch.services.permissions import Principal, forbidden
from hutch.services.sandboxes import ACTIVE, SandboxService
from hutch.services.sandboxes import to_wire as sandbox_wire
from hutch.services.secrets.service import SecretService

log = structlog.get_logger("hutch.privacy")
ERASURE_GRACE = timedelta(days=30)
SYSTEM_ACTOR = "system"


def erased_email(user_id: str) -> str:
    """What a purged user's email becomes (unique, undeliverable)."""
    return f"erased+{user_id}@erased.invalid"


def status_wire(user_id: str, row: UserPrivacyRow | None) -> PrivacyStatus:
    """The wire view of a user's privacy state."""
    if row is None:
        return PrivacyStatus(user_id=user_id)
    return PrivacyStatus(
        user_id=user_id,
        restricted_at=row.restricted_at,
        objections=[Purpose(p) for p in row.objections if p in Purpose.__members__],
        erased_at=row.erased_at,
        purge_after=row.purge_after,
        purged_at=row.purged_at,
    )


class PrivacyService:
    """What a user (or a server administrator for them) may ask about their personal data."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        sandboxes: SandboxService,
        secrets: SecretService | None = None,
        *,
        admin_log: AdminLogFn = noop_admin_log,
        pseudonymise_user: PseudonymiseFn = noop_pseudonymise,
        grace: timedelta = ERASURE_GRACE,
    ) -> None:
        self.db = db
        self.clock = clock
        self.sandboxes = sandboxes
        self.secrets = secrets
        self.admin_log = admin_log
        self.pseudonymise_user = pseudonymise_user
        self.grace = grace
        self.exports = ExportRegistry()
        for name, fn in (
            ("profile", self._collect_profile),
            ("privacy", self._collect_privacy),
            ("teams", self._collect_teams),
            ("projects", self._collect_projects),
            ("api_keys", self._collect_keys),
            ("sandboxes", self._collect_sandboxes),
            ("secrets", self._collect_secrets),
        ):
            self.exports.register(name, fn)

    # --- whom a request is about ---

    def target(self, s: Session, actor: Principal, user_id: str | None) -> UserRow:
        """The user a request acts for: the caller (keys:write), or anyone for an admin."""
        if user_id is None or user_id == actor.user_id:
            actor.require(Scope.keys_write)
            user_id = actor.user_id
        elif Scope.users_admin not in actor.rights:
            raise forbidden(Scope.users_admin)
        row = s.get(UserRow, user_id)
        if row is None:
            raise HutchError(ErrorCode.not_found, "user not found")
        return row

    def _live(self, s: Session, actor: Principal, user_id: str | None) -> UserRow:
        """`target`, refusing an erased account (its data is only waiting to be purged)."""
        user = self.target(s, actor, user_id)
        state = s.get(UserPrivacyRow, user.id)
        if state is not None and state.erased_at is not None:
            raise HutchError(ErrorCode.conflict, "this account was erased; it cannot be changed")
        return user

    def _state(self, s: Session, user_id: str, *, create: bool = False) -> UserPrivacyRow | None:
        row = s.get(UserPrivacyRow, user_id, with_for_update=create)
        if row is None and create:
            row = UserPrivacyRow(user_id=user_id, objections=[])
            s.add(row)
            s.flush()
        return row

    def status(self, s: Session, actor: Principal, user_id: str | None = None) -> PrivacyStatus:
        """Where the account stands on restriction, objections and erasure."""
        user = self.target(s, actor, user_id)
        return status_wire(user.id, self._state(s, user.id))

    # --- flags other services read ---

    def is_restricted(self, user_id: str) -> bool:
        """Whether processing of this user's account is restricted (or erased)."""
        with self.db.session() as s:
            row = s.get(UserPrivacyRow, user_id)
        return row is not None and (row.restricted_at is not None or row.erased_at is not None)

    def objects_to(self, session: Session, user_id: str, purpose: Purpose) -> bool:
        """Whether the user objected to `purpose` (e.g. the exec audit trail): honour it."""
        row = session.get(UserPrivacyRow, user_id)
        return row is not None and purpose.value in row.objections

    def guard_create(self, actor: Principal) -> None:
        """Sandbox-create guard: a restricted account may not start new processing.

        Read with the key: the principal cache drops it when this process commits a change to
        the account's privacy state, and other API processes see it within the cache's TTL."""
        if actor.restricted:
            raise HutchError(
                ErrorCode.account_restricted,
                "processing of this account is restricted: no new sandboxes until the "
                "restriction is lifted (DELETE /v1/me/restriction)",
            )

    # --- rectify ---

    def rectify(
        self,
        s: Session,
        actor: Principal,
        user_id: str | None,
        req: ProfileUpdate,
        *,
        source_ip: str | None,
    ) -> User:
        """Correct the profile's name and email."""
        user = self._live(s, actor, user_id)
        changed = []
        if req.name is not None and req.name != user.name:
            user.name = req.name
            changed.append("name")
        if req.email is not None and req.email.lower() != user.email:
            user.email = req.email.lower()
            changed.append("email")
        if changed:
            try:
                s.flush()  # a taken email fails here, before anything is logged
            except IntegrityError:
                s.rollback()
                raise HutchError(
                    ErrorCode.conflict,
                    "another user already has this email",
                    errors=[{"loc": ["body", "email"], "field": "email", "msg": "already used"}],
                ) from None
            self._log(
                s, actor, "profile.rectified", user.id, source_ip, {"fields": ",".join(changed)}
            )
            s.commit()
        return user_wire(user)

    # --- restrict and object ---

    def restrict(
        self, s: Session, actor: Principal, user_id: str | None, on: bool, *, source_ip: str | None
    ) -> PrivacyStatus:
        """Restrict processing (no new sandboxes; data kept) or lift the restriction."""
        user = self._live(s, actor, user_id)
        row = self._state(s, user.id, create=True)
        assert row is not None
        if on and row.restricted_at is None:
            row.restricted_at = self.clock.now()
            self._log(s, actor, "account.restricted", user.id, source_ip)
        elif not on and row.restricted_at is not None:
            row.restricted_at = None
            self._log(s, actor, "account.restriction_lifted", user.id, source_ip)
        s.commit()
        return status_wire(user.id, row)

    def set_objections(
        self,
        s: Session,
        actor: Principal,
        user_id: str | None,
        purposes: list[Purpose],
        *,
        source_ip: str | None,
    ) -> PrivacyStatus:
        """Record the purposes the user objects to (replacing the previous list)."""
        user = self._live(s, actor, user_id)
        row = self._state(s, user.id, create=True)
        assert row is not None
        row.objections = sorted({p.value for p in purposes})
        self._log(
            s,
            actor,
            "account.objections_set",
            user.id,
            source_ip,
            {"purposes": ",".join(row.objections)},
        )
        s.commit()
        return status_wire(user.id, row)

    # --- export ---

    def export(
        self, s: Session, actor: Principal, user_id: str | None, *, source_ip: str | None
    ) -> tuple[str, bytes]:
        """A zip archive of everything Hutch holds about the user; returns (user id, bytes)."""
        user = self.target(s, actor, user_id)
        data = self.exports.archive(s, user.id, self.clock.now())
        self._log(s, actor, "account.exported", user.id, source_ip, {"bytes": str(len(data))})
        s.commit()
        return user.id, data

    def _collect_profile(self, s: Session, user_id: str) -> object:
        row = s.get(UserRow, user_id)
        assert row is not None
        return user_wire(row)

    def _collect_privacy(self, s: Session, user_id: str) -> object:
        return status_wire(user_id, self._state(s, user_id))

    def _collect_teams(self, s: Session, user_id: str) -> object:
        rows = s.execute(
            select(TeamRow, MemberRow.role, MemberRow.created_at)
            .join(MemberRow, MemberRow.team_id == TeamRow.id)
            .where(MemberRow.user_id == user_id)
            .order_by(TeamRow.id)
        ).all()
        return [
            {"team_id": t.id, "name": t.name, "role": Role(role), "member_since": since}
            for t, role, since in rows
        ]

    def _project_rows(self, s: Session, user_id: str) -> list[ProjectRow]:
        return list(
            s.scalars(
                select(ProjectRow)
                .join(MemberRow, MemberRow.team_id == ProjectRow.team_id)
                .where(MemberRow.user_id == user_id)
                .order_by(ProjectRow.id)
            )
        )

    def _collect_projects(self, s: Session, user_id: str) -> object:
        return [project_wire(p) for p in self._project_rows(s, user_id)]

    def _collect_keys(self, s: Session, user_id: str) -> object:
        rows = s.scalars(
            select(ApiKeyRow).where(ApiKeyRow.user_id == user_id).order_by(ApiKeyRow.id)
        )
        return [key_wire(r) for r in rows]

    def _collect_sandboxes(self, s: Session, user_id: str) -> object:
        rows = s.scalars(
            select(SandboxRow)
            .join(SandboxOwnerRow, SandboxOwnerRow.sandbox_id == SandboxRow.id)
            .where(SandboxOwnerRow.user_id == user_id)
            .order_by(SandboxRow.id)
        )
        return [sandbox_wire(r) for r in rows]

    def _collect_secrets(self, s: Session, user_id: str) -> object:
        if self.secrets is None:
            return []
        ids = [p.id for p in self._project_rows(s, user_id)]
        return self.secrets.names_in_projects(s, ids)

    # --- erase ---

    async def erase(
        self, actor: Principal, user_id: str | None, confirm: str, *, source_ip: str | None
    ) -> PrivacyStatus:
        """Block the account at once, kill its sandboxes, and schedule the purge."""

        def mark() -> tuple[PrivacyStatus, list[str]]:
            with self.db.session() as s:
                user = self.target(s, actor, user_id)
                if confirm.strip().lower() != user.email:
                    raise HutchError(
                        ErrorCode.invalid_request,
                        "to erase the account, pass its email address as `confirm`",
                        errors=[
                            {"loc": ["query", "confirm"], "field": "confirm", "msg": "mismatch"}
                        ],
                    )
                now = self.clock.now()
                row = self._state(s, user.id, create=True)
                assert row is not None
                if row.erased_at is None:
                    row.erased_at, row.purge_after = now, now + self.grace
                    self._log(s, actor, "account.erased", user.id, source_ip)
                s.execute(
                    update(ApiKeyRow)
                    .where(ApiKeyRow.user_id == user.id, ApiKeyRow.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                s.commit()
                active = list(
                    s.scalars(
                        select(SandboxOwnerRow.sandbox_id)
                        .join(SandboxRow, SandboxRow.id == SandboxOwnerRow.sandbox_id)
                        .where(SandboxOwnerRow.user_id == user.id, SandboxRow.state.in_(ACTIVE))
                    )
                )
                return status_wire(user.id, row), active

        status, active = await to_thread.run_sync(mark)
        log.info("account_erased", user_id=status.user_id, sandboxes=len(active))
        for sandbox_id in active:
            try:
                await self.sandboxes.stop(sandbox_id, "account_erased")
            except Exception as e:
                # The reconciler's expiry still ends it; the erasure itself stands.
                log.warning("erase_kill_failed", sandbox_id=sandbox_id, error=type(e).__name__)
        return status

    def purge_due(self, now: datetime) -> int:
        """Purge the personal data of erasures past their grace period (idempotent, clock-driven).

        Returns how many accounts were purged by this call."""
        with self.db.session() as s:
            due = list(
                s.scalars(
                    select(UserPrivacyRow.user_id).where(
                        UserPrivacyRow.erased_at.is_not(None),
                        UserPrivacyRow.purge_after <= now,
                        UserPrivacyRow.purged_at.is_(None),
                    )
                )
            )
        purged = 0
        for user_id in due:
            try:
                # Billing first: if it fails, the account stays due and the next run retries.
                self.pseudonymise_user(user_id)
                self._purge_one(user_id, now)
                purged += 1
            except Exception as e:
                log.warning("purge_failed", user_id=user_id, error=type(e).__name__)
        if purged:
            log.info("accounts_purged", count=purged)
        return purged

    def _purge_one(self, user_id: str, now: datetime) -> None:
        with self.db.session() as s:
            row = s.get(UserPrivacyRow, user_id, with_for_update=True)
            if row is None or row.purged_at is not None:
                return  # another process got here first
            user = s.get(UserRow, user_id)
            if user is not None:
                user.email, user.name, user.is_admin = erased_email(user_id), "erased", False
                user.disabled_at = user.disabled_at or now
            s.execute(delete(MemberRow).where(MemberRow.user_id == user_id))
            s.execute(delete(ApiKeyRow).where(ApiKeyRow.user_id == user_id))
            s.execute(delete(SandboxOwnerRow).where(SandboxOwnerRow.user_id == user_id))
            s.execute(delete(IdempotencyRow).where(IdempotencyRow.scope.startswith(f"{user_id}:")))
            row.objections, row.restricted_at, row.purged_at = [], None, now
            self.admin_log(
                s,
                actor_user_id=SYSTEM_ACTOR,
                action="account.purged",
                target_type="user",
                target_id=user_id,
                source_ip=None,
            )
            s.commit()

    def _log(
        self,
        s: Session,
        actor: Principal,
        action: str,
        user_id: str,
        source_ip: str | None,
        details: dict[str, str] | None = None,
    ) -> None:
        self.admin_log(
            s,
            actor_user_id=actor.user_id,
            action=action,
            target_type="user",
            target_id=user_id,
            source_ip=source_ip,
            details=details,
        )
