"""Project secrets: write-only values, names and metadata to read, injection, KEK rewrap."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hutch.db.models import ProjectRow
from hutch.db.privacy import ProjectSecretRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.api import Page, Scope
from hutch.models.common import ErrorCode, HutchError
from hutch.models.privacy import RewrapResult, Secret
from hutch.services.accounts import AccountService
from hutch.services.clock import Clock
from hutch.services.hooks import AdminLogFn, noop_admin_log
from hutch.services.pagination import paginate
from hutch.services.permissions import Principal
from hutch.services.secrets.envelope import Sealed, context, open_sealed, seal
from hutch.services.secrets.kek import KekError, KekProvider

log = structlog.get_logger("hutch.secrets")


def to_wire(row: ProjectSecretRow) -> Secret:
    """The listable view of a secret: never its value."""
    return Secret(
        project_id=row.project_id,
        name=row.name,
        version=row.version,
        kek_id=row.kek_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _unavailable(e: KekError, what: str) -> HutchError:
    log.warning("secrets_unavailable", action=what, error=str(e))
    return HutchError(
        ErrorCode.secrets_unavailable,
        f"secrets cannot be {what} right now: the key-encryption-key provider failed",
    )


def _sealed(row: ProjectSecretRow) -> Sealed:
    return Sealed(row.kek_id, row.wrapped_key, row.nonce, row.ciphertext)


class SecretService:
    """Write, list, delete and inject project secrets; rewrap their data keys."""

    def __init__(
        self,
        db: Database,
        provider: KekProvider,
        accounts: AccountService,
        clock: Clock,
        admin_log: AdminLogFn = noop_admin_log,
    ) -> None:
        self.db = db
        self.provider = provider
        self.accounts = accounts
        self.clock = clock
        self.admin_log = admin_log

    def _project(self, s: Session, actor: Principal, project_id: str, scope: Scope) -> ProjectRow:
        return self.accounts._project(s, actor, project_id, scope)

    def _row(self, s: Session, project_id: str, name: str) -> ProjectSecretRow:
        row = s.scalar(
            select(ProjectSecretRow).where(
                ProjectSecretRow.project_id == project_id, ProjectSecretRow.name == name
            )
        )
        if row is None:
            raise HutchError(ErrorCode.not_found, f"secret {name!r} not found in this project")
        return row

    def put(
        self,
        s: Session,
        actor: Principal,
        project_id: str,
        name: str,
        value: str,
        *,
        source_ip: str | None,
    ) -> tuple[Secret, bool]:
        """Create or replace a secret (a new version with a new data key); True if created."""
        project = self._project(s, actor, project_id, Scope.projects_admin)
        now = self.clock.now()
        row = s.scalar(
            select(ProjectSecretRow)
            .where(ProjectSecretRow.project_id == project_id, ProjectSecretRow.name == name)
            .with_for_update()
        )
        created = row is None
        version = 1 if row is None else row.version + 1
        try:
            sealed = seal(
                self.provider, value.encode(), context(project.team_id, project_id, name, version)
            )
        except KekError as e:
            raise _unavailable(e, "written") from None
        if row is None:
            row = ProjectSecretRow(
                id=new_id("sec"), project_id=project_id, name=name, created_at=now
            )
            s.add(row)
        row.version = version
        row.kek_id, row.wrapped_key = sealed.kek_id, sealed.wrapped_key
        row.nonce, row.ciphertext = sealed.nonce, sealed.ciphertext
        row.updated_at = now
        self.admin_log(
            s,
            actor_user_id=actor.user_id,
            action="secret.written",
            target_type="secret",
            target_id=f"{project_id}/{name}",
            source_ip=source_ip,
            details={"version": str(version)},
        )
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            raise HutchError(
                ErrorCode.conflict, f"secret {name!r} was written concurrently; retry"
            ) from None
        log.info("secret_written", project_id=project_id, name=name, version=version)
        return to_wire(row), created

    def list(
        self, s: Session, actor: Principal, project_id: str, *, limit: int, cursor: str | None
    ) -> Page[Secret]:
        """Names and metadata of a project's secrets, newest first."""
        self._project(s, actor, project_id, Scope.projects_read)
        stmt = select(ProjectSecretRow).where(ProjectSecretRow.project_id == project_id)
        rows, nxt = paginate(s, stmt, ProjectSecretRow.id, limit=limit, cursor=cursor)
        return Page[Secret](items=[to_wire(r) for r in rows], next_cursor=nxt)

    def get(self, s: Session, actor: Principal, project_id: str, name: str) -> Secret:
        """One secret's metadata."""
        self._project(s, actor, project_id, Scope.projects_read)
        return to_wire(self._row(s, project_id, name))

    def delete(
        self, s: Session, actor: Principal, project_id: str, name: str, *, source_ip: str | None
    ) -> None:
        """Delete a secret (its ciphertext and wrapped key go with the row)."""
        self._project(s, actor, project_id, Scope.projects_admin)
        s.delete(self._row(s, project_id, name))
        self.admin_log(
            s,
            actor_user_id=actor.user_id,
            action="secret.deleted",
            target_type="secret",
            target_id=f"{project_id}/{name}",
            source_ip=source_ip,
        )
        s.commit()
        log.info("secret_deleted", project_id=project_id, name=name)

    # --- injection ---

    def env_for(self, actor: Principal, pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Decrypt the named secrets of the key's project as {ENV_NAME: value} (memory only)."""
        if not pairs:
            return {}
        names = {name for _, name in pairs}
        with self.db.session() as s:
            rows = {
                r.name: r
                for r in s.scalars(
                    select(ProjectSecretRow).where(
                        ProjectSecretRow.project_id == actor.project_id,
                        ProjectSecretRow.name.in_(names),
                    )
                )
            }
        missing = sorted(names - rows.keys())
        if missing:
            raise HutchError(
                ErrorCode.invalid_request,
                f"this project has no secret named {', '.join(repr(m) for m in missing)}",
                errors=[
                    {"loc": ["body", "secrets"], "field": "secrets", "msg": f"unknown secret {m!r}"}
                    for m in missing
                ],
            )
        out: dict[str, str] = {}
        values: dict[str, str] = {}
        try:
            for name, row in rows.items():
                ctx = context(actor.team_id, row.project_id, name, row.version)
                values[name] = open_sealed(self.provider, _sealed(row), ctx).decode()
        except KekError as e:
            raise _unavailable(e, "decrypted") from None
        for env, name in pairs:
            out[env] = values[name]
        return out

    # --- KEK rotation ---

    def rewrap(self, actor: Principal, *, rotate: bool, source_ip: str | None) -> RewrapResult:
        """Optionally rotate the KEK, then rewrap every data key not under the current KEK.

        Only data keys are unwrapped (in memory); secret values are never decrypted."""
        actor.require(Scope.users_admin)
        try:
            if rotate:
                self.provider.rotate()
            current = self.provider.current_kek_id()
        except KekError as e:
            raise HutchError(ErrorCode.secrets_unavailable, str(e)) from None
        n, already = self.rewrap_all(current)
        with self.db.session() as s:
            self.admin_log(
                s,
                actor_user_id=actor.user_id,
                action="kek.rotated" if rotate else "kek.rewrapped",
                target_type="kek",
                target_id=current,
                source_ip=source_ip,
                details={"rewrapped": str(n)},
            )
            s.commit()
        log.info("secrets_rewrapped", kek_id=current, rewrapped=n, rotated=rotate)
        return RewrapResult(kek_id=current, rotated=rotate, rewrapped=n, already_current=already)

    def rewrap_all(self, current: str) -> tuple[int, int]:
        """Rewrap rows not under `current`, one short transaction each; (rewrapped, current)."""
        with self.db.session() as s:
            ids = list(
                s.scalars(select(ProjectSecretRow.id).where(ProjectSecretRow.kek_id != current))
            )
            total = s.scalar(select(func.count()).select_from(ProjectSecretRow)) or 0
        done = 0
        for secret_id in ids:
            with self.db.session() as s:
                row = s.get(ProjectSecretRow, secret_id, with_for_update=True)
                if row is None or row.kek_id == current:
                    continue
                team_id = s.scalar(
                    select(ProjectRow.team_id).where(ProjectRow.id == row.project_id)
                )
                assert team_id is not None
                ctx = context(team_id, row.project_id, row.name, row.version)
                try:
                    row.kek_id, row.wrapped_key = self.provider.rewrap(
                        row.kek_id, row.wrapped_key, ctx
                    )
                except KekError as e:
                    raise HutchError(
                        ErrorCode.secrets_unavailable, f"rewrap stopped: {e}"
                    ) from None
                s.commit()
                done += 1
        return done, total - len(ids)

    def names_in_projects(self, s: Session, project_ids: Sequence[str]) -> builtins.list[Secret]:
        """Metadata of the secrets of these projects (for a data export)."""
        if not project_ids:
            return []
        rows = s.scalars(
            select(ProjectSecretRow)
            .where(ProjectSecretRow.project_id.in_(project_ids))
            .order_by(ProjectSecretRow.project_id, ProjectSecretRow.name)
        )
        return [to_wire(r) for r in rows]
