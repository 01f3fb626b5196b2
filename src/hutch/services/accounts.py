"""Tenancy: users, teams and their members' roles, projects, and first-start bootstrap."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hutch.db.models import MemberRow, ProjectRow, TeamRow, UserRow
from hutch.ids import new_id
from hutch.models.api import (
    Member,
    MemberAdd,
    MemberUpdate,
    Page,
    Project,
    ProjectCreate,
    ProjectUpdate,
    Role,
    Scope,
    Team,
    TeamCreate,
    User,
    UserCreate,
)
from hutch.models.common import ErrorCode, HutchError
from hutch.services.audit import AdminLog
from hutch.services.clock import Clock
from hutch.services.pagination import paginate
from hutch.services.permissions import ROLE_SCOPES, Principal, forbidden


def role_of(session: Session, team_id: str, user_id: str) -> Role | None:
    """A user's role in a team, or None when not a member."""
    role = session.scalar(
        select(MemberRow.role).where(MemberRow.team_id == team_id, MemberRow.user_id == user_id)
    )
    return Role(role) if role else None


def _not_found(what: str) -> HutchError:
    return HutchError(ErrorCode.not_found, f"{what} not found")


def _roles_granting(actor: Principal, scope: Scope) -> list[str]:
    """Roles in which this key would hold `scope` (to filter lists in SQL)."""
    return [r.value for r in ROLE_SCOPES if scope in actor.rights_in(r)]


def user_wire(row: UserRow) -> User:
    """Wire view of a user."""
    return User(
        user_id=row.id,
        email=row.email,
        name=row.name,
        is_admin=row.is_admin,
        created_at=row.created_at,
    )


def project_wire(row: ProjectRow) -> Project:
    """Wire view of a project."""
    return Project(
        project_id=row.id,
        team_id=row.team_id,
        name=row.name,
        created_at=row.created_at,
        audit_exec=bool(row.audit_exec),
    )


def _member_wire(row: MemberRow) -> Member:
    return Member(
        team_id=row.team_id, user_id=row.user_id, role=Role(row.role), created_at=row.created_at
    )


class AccountService:
    """Users, teams, members and projects, with the permission rules that govern them."""

    def __init__(
        self,
        clock: Clock,
        admin_log: AdminLog | None = None,
        on_team_created: Callable[[Session, str], object] | None = None,
    ) -> None:
        self.clock = clock
        self.admin_log = admin_log
        # Billing opens the team's account (and its welcome credit) in the same transaction.
        self.on_team_created = on_team_created

    def _audit(
        self,
        session: Session,
        actor: Principal,
        action: str,
        target_type: str,
        target_id: str,
        details: dict[str, str] | None = None,
    ) -> None:
        if self.admin_log is not None:
            self.admin_log.record_for(session, actor, action, target_type, target_id, details)

    def _commit(self, session: Session, conflict: str) -> None:
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise HutchError(ErrorCode.conflict, conflict) from None

    # --- users (server administrators) ---

    def create_user(self, session: Session, actor: Principal, req: UserCreate) -> User:
        """Create a user."""
        actor.require(Scope.users_admin)
        row = UserRow(
            id=new_id("usr"),
            email=req.email.lower(),
            name=req.name,
            is_admin=req.is_admin,
            created_at=self.clock.now(),
        )
        self._audit(session, actor, "user.create", "user", row.id, {"is_admin": str(row.is_admin)})
        session.add(row)
        self._commit(session, f"a user with email {req.email.lower()!r} already exists")
        return user_wire(row)

    def list_users(
        self, session: Session, actor: Principal, *, limit: int, cursor: str | None
    ) -> Page[User]:
        """Every user."""
        actor.require(Scope.users_admin)
        rows, nxt = paginate(session, select(UserRow), UserRow.id, limit=limit, cursor=cursor)
        return Page[User](items=[user_wire(r) for r in rows], next_cursor=nxt)

    def get_user(self, session: Session, user_id: str) -> User:
        """One user by id (no permission check: callers decide who may see whom)."""
        row = session.get(UserRow, user_id)
        if row is None:
            raise _not_found("user")
        return user_wire(row)

    # --- teams ---

    def _team_role(self, session: Session, actor: Principal, team_id: str) -> Role:
        role = actor.role if team_id == actor.team_id else role_of(session, team_id, actor.user_id)
        if role is None:
            raise _not_found("team")
        return role

    def _require_in_team(
        self, session: Session, actor: Principal, team_id: str, scope: Scope
    ) -> Role:
        role = self._team_role(session, actor, team_id)
        if scope not in actor.rights_in(role):
            raise forbidden(scope)
        return role

    def create_team(self, session: Session, actor: Principal, req: TeamCreate) -> Team:
        """Create a team; its creator becomes the owner."""
        if not {Scope.teams_admin, Scope.users_admin} & actor.rights:
            raise forbidden(Scope.teams_admin)
        now = self.clock.now()
        team = TeamRow(id=new_id("team"), name=req.name, created_at=now)
        session.add(team)
        session.flush()
        session.add(
            MemberRow(team_id=team.id, user_id=actor.user_id, role=Role.owner.value, created_at=now)
        )
        if self.on_team_created is not None:
            self.on_team_created(session, team.id)
        self._audit(session, actor, "team.create", "team", team.id)
        session.commit()
        return Team(team_id=team.id, name=team.name, created_at=team.created_at, role=Role.owner)

    def list_teams(
        self, session: Session, actor: Principal, *, limit: int, cursor: str | None
    ) -> Page[Team]:
        """Teams the caller belongs to (where its key may read members)."""
        stmt = (
            select(TeamRow)
            .join(MemberRow, MemberRow.team_id == TeamRow.id)
            .where(
                MemberRow.user_id == actor.user_id,
                MemberRow.role.in_(_roles_granting(actor, Scope.members_read)),
            )
        )
        rows, nxt = paginate(session, stmt, TeamRow.id, limit=limit, cursor=cursor)
        roles = dict(
            session.execute(
                select(MemberRow.team_id, MemberRow.role).where(
                    MemberRow.user_id == actor.user_id, MemberRow.team_id.in_([r.id for r in rows])
                )
            ).all()
        )
        items = [
            Team(team_id=r.id, name=r.name, created_at=r.created_at, role=Role(roles[r.id]))
            for r in rows
        ]
        return Page[Team](items=items, next_cursor=nxt)

    def get_team(self, session: Session, actor: Principal, team_id: str) -> Team:
        """One of the caller's teams."""
        role = self._require_in_team(session, actor, team_id, Scope.members_read)
        row = session.get(TeamRow, team_id)
        assert row is not None  # membership implies the team exists (foreign key)
        return Team(team_id=row.id, name=row.name, created_at=row.created_at, role=role)

    # --- members ---

    def list_members(
        self, session: Session, actor: Principal, team_id: str, *, limit: int, cursor: str | None
    ) -> Page[Member]:
        """Members of one of the caller's teams."""
        self._require_in_team(session, actor, team_id, Scope.members_read)
        stmt = select(MemberRow).where(MemberRow.team_id == team_id)
        rows, nxt = paginate(session, stmt, MemberRow.user_id, limit=limit, cursor=cursor)
        return Page[Member](items=[_member_wire(r) for r in rows], next_cursor=nxt)

    def _owners(self, session: Session, team_id: str) -> int:
        return (
            session.scalar(
                select(func.count())
                .select_from(MemberRow)
                .where(MemberRow.team_id == team_id, MemberRow.role == Role.owner.value)
            )
            or 0
        )

    @staticmethod
    def _check_owner_change(actor_role: Role, roles: Iterable[Role]) -> None:
        # Admins manage members and admins; only owners create, demote or remove owners.
        if Role.owner in roles and actor_role is not Role.owner:
            raise HutchError(
                ErrorCode.forbidden, "only an owner can grant, change or remove the owner role"
            )

    def add_member(
        self, session: Session, actor: Principal, team_id: str, req: MemberAdd
    ) -> Member:
        """Add a user to a team with a role."""
        actor_role = self._require_in_team(session, actor, team_id, Scope.members_admin)
        self._check_owner_change(actor_role, [req.role])
        if session.get(UserRow, req.user_id) is None:
            raise _not_found("user")
        row = MemberRow(
            team_id=team_id, user_id=req.user_id, role=req.role.value, created_at=self.clock.now()
        )
        self._audit(
            session,
            actor,
            "member.add",
            "team",
            team_id,
            {"user_id": req.user_id, "role": req.role.value},
        )
        session.add(row)
        self._commit(session, "this user is already a member of the team")
        return _member_wire(row)

    def _member(self, session: Session, team_id: str, user_id: str) -> MemberRow:
        row = session.get(MemberRow, (team_id, user_id), with_for_update=True)
        if row is None:
            raise _not_found("member")
        return row

    def update_member(
        self, session: Session, actor: Principal, team_id: str, user_id: str, req: MemberUpdate
    ) -> Member:
        """Change a member's role; the last owner cannot be demoted."""
        actor_role = self._require_in_team(session, actor, team_id, Scope.members_admin)
        row = self._member(session, team_id, user_id)
        self._check_owner_change(actor_role, [Role(row.role), req.role])
        if (
            row.role == Role.owner.value
            and req.role is not Role.owner
            and self._owners(session, team_id) <= 1
        ):
            raise HutchError(
                ErrorCode.conflict, "a team needs at least one owner; add another first"
            )
        self._audit(
            session,
            actor,
            "member.role_change",
            "team",
            team_id,
            {"user_id": user_id, "from": row.role, "to": req.role.value},
        )
        row.role = req.role.value
        session.commit()
        return _member_wire(row)

    def remove_member(self, session: Session, actor: Principal, team_id: str, user_id: str) -> None:
        """Remove a member; the last owner cannot be removed."""
        actor_role = self._require_in_team(session, actor, team_id, Scope.members_admin)
        row = self._member(session, team_id, user_id)
        self._check_owner_change(actor_role, [Role(row.role)])
        if row.role == Role.owner.value and self._owners(session, team_id) <= 1:
            raise HutchError(
                ErrorCode.conflict, "a team needs at least one owner; add another first"
            )
        self._audit(
            session,
            actor,
            "member.remove",
            "team",
            team_id,
            {"user_id": user_id, "role": row.role},
        )
        session.delete(row)
        session.commit()

    # --- projects ---

    def create_project(self, session: Session, actor: Principal, req: ProjectCreate) -> Project:
        """Create a project in one of the caller's teams."""
        team_id = req.team_id or actor.team_id
        self._require_in_team(session, actor, team_id, Scope.projects_admin)
        row = ProjectRow(
            id=new_id("prj"), team_id=team_id, name=req.name, created_at=self.clock.now()
        )
        self._audit(session, actor, "project.create", "project", row.id, {"team_id": team_id})
        session.add(row)
        self._commit(session, f"the team already has a project named {req.name!r}")
        return project_wire(row)

    def list_projects(
        self, session: Session, actor: Principal, *, limit: int, cursor: str | None
    ) -> Page[Project]:
        """Projects of every team the caller belongs to."""
        stmt = (
            select(ProjectRow)
            .join(MemberRow, MemberRow.team_id == ProjectRow.team_id)
            .where(
                MemberRow.user_id == actor.user_id,
                MemberRow.role.in_(_roles_granting(actor, Scope.projects_read)),
            )
        )
        rows, nxt = paginate(session, stmt, ProjectRow.id, limit=limit, cursor=cursor)
        return Page[Project](items=[project_wire(r) for r in rows], next_cursor=nxt)

    def _project(
        self, session: Session, actor: Principal, project_id: str, scope: Scope
    ) -> ProjectRow:
        row = session.get(ProjectRow, project_id)
        if row is None:
            raise _not_found("project")
        try:
            self._require_in_team(session, actor, row.team_id, scope)
        except HutchError as e:
            if e.code is ErrorCode.not_found:
                raise _not_found("project") from None
            raise
        return row

    def get_project(self, session: Session, actor: Principal, project_id: str) -> Project:
        """One project of the caller's teams."""
        return project_wire(self._project(session, actor, project_id, Scope.projects_read))

    def update_project(
        self, session: Session, actor: Principal, project_id: str, req: ProjectUpdate
    ) -> Project:
        """Rename a project or change its settings."""
        row = self._project(session, actor, project_id, Scope.projects_admin)
        changed: dict[str, str] = {}
        if req.name is not None and req.name != row.name:
            row.name = changed["name"] = req.name
        if req.audit_exec is not None and req.audit_exec != row.audit_exec:
            row.audit_exec = req.audit_exec
            changed["audit_exec"] = str(req.audit_exec).lower()
        if changed:
            self._audit(session, actor, "project.update", "project", row.id, changed)
        self._commit(session, f"the team already has a project named {req.name!r}")
        return project_wire(row)

    # --- first start ---

    def has_users(self, session: Session) -> bool:
        """Whether anyone exists yet."""
        return session.scalar(select(UserRow.id).limit(1)) is not None

    def bootstrap_owner(self, session: Session, *, email: str, name: str) -> tuple[str, str]:
        """Create an admin user who owns a default team and project; returns their ids."""
        now = self.clock.now()
        user = UserRow(id=new_id("usr"), email=email, name=name, is_admin=True, created_at=now)
        team = TeamRow(id=new_id("team"), name="default", created_at=now)
        project = ProjectRow(id=new_id("prj"), team_id=team.id, name="default", created_at=now)
        session.add_all([user, team])
        session.flush()
        session.add_all(
            [
                MemberRow(team_id=team.id, user_id=user.id, role=Role.owner.value, created_at=now),
                project,
            ]
        )
        if self.on_team_created is not None:
            self.on_team_created(session, team.id)
        session.flush()
        return user.id, project.id
