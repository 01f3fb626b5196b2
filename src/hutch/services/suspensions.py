"""Suspension and termination of users and teams by a server administrator.

A suspended account keeps reading its data but can neither create sandboxes nor run commands
(403 `account_suspended`); its running sandboxes keep running. Termination is final: the account
stays blocked, its API keys are revoked and its running sandboxes are killed (a team's, or for a
user those of the teams they alone belong to). Every decision and its reason go to the admin log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from hutch.db.audit import SuspensionRow
from hutch.db.models import ApiKeyRow, MemberRow, ProjectRow, SandboxRow, TeamRow, UserRow
from hutch.db.privacy import SandboxOwnerRow
from hutch.models.api import Scope
from hutch.models.audit import SubjectType, SuspendRequest, Suspension, SuspensionState
from hutch.models.common import ErrorCode, HutchError
from hutch.services.audit import AdminLog
from hutch.services.clock import Clock
from hutch.services.permissions import Principal

if TYPE_CHECKING:
    from hutch.services.sandboxes import SandboxService

ALIVE = ("creating", "running", "stopping")


def suspension_of(session: Session, actor: Principal) -> str | None:
    """Why the caller's user or its key's team may not create or run anything, or None."""
    row = session.scalars(
        select(SuspensionRow).where(
            or_(
                (SuspensionRow.subject_type == SubjectType.user.value)
                & (SuspensionRow.subject_id == actor.user_id),
                (SuspensionRow.subject_type == SubjectType.team.value)
                & (SuspensionRow.subject_id == actor.team_id),
            )
        )
    ).first()
    if row is None:
        return None
    whose = "this account" if row.subject_type == SubjectType.user.value else "this team"
    return f"{whose} is {row.state} by an administrator: no new sandboxes or commands"


def sandbox_suspension(session: Session, sandbox_id: str) -> str | None:
    """Why a sandbox's team, or the user who created it, may not serve anything, or None."""
    team_id = session.scalar(
        select(ProjectRow.team_id)
        .join(SandboxRow, SandboxRow.project_id == ProjectRow.id)
        .where(SandboxRow.id == sandbox_id)
    )
    owner = session.scalar(
        select(SandboxOwnerRow.user_id).where(SandboxOwnerRow.sandbox_id == sandbox_id)
    )
    row = session.scalars(
        select(SuspensionRow).where(
            or_(
                (SuspensionRow.subject_type == SubjectType.team.value)
                & (SuspensionRow.subject_id == (team_id or "")),
                (SuspensionRow.subject_type == SubjectType.user.value)
                & (SuspensionRow.subject_id == (owner or "")),
            )
        )
    ).first()
    if row is None:
        return None
    return f"the owner of this sandbox is {row.state} by an administrator"


def refuse_if_suspended(message: str | None) -> None:
    """403 `account_suspended` with `message`, if there is one."""
    if message is not None:
        raise HutchError(ErrorCode.account_suspended, message)


def check_not_suspended(session: Session, actor: Principal) -> None:
    """Raise 403 `account_suspended` when the caller's user or its key's team is suspended."""
    refuse_if_suspended(suspension_of(session, actor))


def _wire(row: SuspensionRow, killed: int = 0, revoked: int = 0) -> Suspension:
    return Suspension(
        subject_type=SubjectType(row.subject_type),
        subject_id=row.subject_id,
        state=SuspensionState(row.state),
        reason=row.reason,
        at=row.at,
        by_user_id=row.by_user_id,
        sandboxes_killed=killed,
        keys_revoked=revoked,
    )


class SuspensionService:
    """Suspend, reinstate and terminate users and teams."""

    def __init__(self, clock: Clock, admin_log: AdminLog, sandboxes: SandboxService) -> None:
        self.clock = clock
        self.admin_log = admin_log
        self.sandboxes = sandboxes

    def _subject(self, session: Session, actor: Principal, kind: SubjectType, sid: str) -> None:
        actor.require(Scope.users_admin)
        model = UserRow if kind is SubjectType.user else TeamRow
        if session.get(model, sid) is None:
            raise HutchError(ErrorCode.not_found, f"{kind.value} not found")
        if kind is SubjectType.user and sid == actor.user_id:
            raise HutchError(
                ErrorCode.conflict, "an administrator cannot suspend or terminate themselves"
            )

    def get(self, session: Session, actor: Principal, kind: SubjectType, sid: str) -> Suspension:
        """The current suspension of a user or team (404 when there is none)."""
        actor.require(Scope.users_admin)
        row = session.get(SuspensionRow, (kind.value, sid))
        if row is None:
            raise HutchError(ErrorCode.not_found, f"this {kind.value} is not suspended")
        return _wire(row)

    def suspend(
        self,
        session: Session,
        actor: Principal,
        kind: SubjectType,
        sid: str,
        req: SuspendRequest,
        state: SuspensionState = SuspensionState.suspended,
    ) -> Suspension:
        """Block new sandboxes and commands (commits)."""
        self._subject(session, actor, kind, sid)
        row = session.get(SuspensionRow, (kind.value, sid), with_for_update=True)
        if row is not None and row.state == SuspensionState.terminated.value:
            raise HutchError(ErrorCode.conflict, f"this {kind.value} is terminated")
        if row is None:
            row = SuspensionRow(subject_type=kind.value, subject_id=sid)
            session.add(row)
        row.state, row.reason = state.value, req.reason
        row.at, row.by_user_id = self.clock.now(), actor.user_id
        action = "account.suspend" if state is SuspensionState.suspended else "account.terminate"
        self.admin_log.record_for(session, actor, action, kind.value, sid, {"reason": req.reason})
        session.commit()
        return _wire(row)

    def unsuspend(
        self, session: Session, actor: Principal, kind: SubjectType, sid: str, req: SuspendRequest
    ) -> None:
        """Reinstate a suspended (not terminated) user or team (commits)."""
        self._subject(session, actor, kind, sid)
        row = session.get(SuspensionRow, (kind.value, sid), with_for_update=True)
        if row is None:
            raise HutchError(ErrorCode.not_found, f"this {kind.value} is not suspended")
        if row.state == SuspensionState.terminated.value:
            raise HutchError(ErrorCode.conflict, "termination is final; it cannot be undone")
        session.delete(row)
        self.admin_log.record_for(
            session, actor, "account.unsuspend", kind.value, sid, {"reason": req.reason}
        )
        session.commit()

    def _doomed_projects(self, session: Session, kind: SubjectType, sid: str) -> list[str]:
        """Projects whose sandboxes and keys go: a team's, or those of a user's own teams."""
        if kind is SubjectType.team:
            teams = [sid]
        else:
            mine = select(MemberRow.team_id).where(MemberRow.user_id == sid)
            sizes = (
                select(MemberRow.team_id)
                .where(MemberRow.team_id.in_(mine))
                .group_by(MemberRow.team_id)
                .having(func.count() == 1)
            )
            teams = list(session.scalars(sizes))
        return list(session.scalars(select(ProjectRow.id).where(ProjectRow.team_id.in_(teams))))

    def terminate(
        self, session: Session, actor: Principal, kind: SubjectType, sid: str, req: SuspendRequest
    ) -> tuple[Suspension, list[str]]:
        """Block for good and revoke keys (commits); returns the sandboxes to kill next."""
        self._subject(session, actor, kind, sid)
        projects = self._doomed_projects(session, kind, sid)
        keys = update(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
        if kind is SubjectType.user:
            keys = keys.where(ApiKeyRow.user_id == sid)
        else:
            keys = keys.where(ApiKeyRow.project_id.in_(projects))
        revoked = session.execute(keys.values(revoked_at=self.clock.now())).rowcount  # type: ignore[attr-defined]
        ids = list(
            session.scalars(
                select(SandboxRow.id).where(
                    SandboxRow.project_id.in_(projects), SandboxRow.state.in_(ALIVE)
                )
            )
        )
        wire = self.suspend(session, actor, kind, sid, req, SuspensionState.terminated)
        return wire.model_copy(update={"keys_revoked": int(revoked)}), ids

    async def kill(self, sandbox_ids: list[str]) -> int:
        """Kill a terminated account's sandboxes; how many were alive."""
        killed = 0
        for sandbox_id in sandbox_ids:
            killed += await self.sandboxes.stop(sandbox_id, "terminated")
        return killed
