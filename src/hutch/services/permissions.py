"""Roles, scopes and the caller's context: a key's effective rights are scopes ∩ role."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from hutch.models.api import Mode, Role, Scope
from hutch.models.common import ErrorCode, HutchError

S = Scope
_VIEWER = frozenset({S.sandboxes_read, S.keys_write, S.projects_read, S.members_read})
# Reaching a sandbox's ports can drive whatever serves there (a notebook runs code), so it is a
# member's right like sandboxes:write; a key may hold ports:access alone (a preview key).
_MEMBER = _VIEWER | {S.sandboxes_write, S.ports_access}
_ADMIN = _MEMBER | {
    S.keys_admin,
    S.projects_admin,
    S.members_admin,
    S.billing_read,
    S.billing_write,
}
_OWNER = _ADMIN | {S.teams_admin}

ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.viewer: _VIEWER,
    Role.member: _MEMBER,
    Role.admin: _ADMIN,
    Role.owner: _OWNER,
}
# Granted by being a server administrator (a user flag), not by any team role.
ADMIN_USER_SCOPES = frozenset({S.users_admin})


def role_scopes(role: Role | None, *, is_admin: bool = False) -> frozenset[Scope]:
    """What a user with this role (and admin flag) may do at most."""
    base = ROLE_SCOPES[role] if role is not None else frozenset()
    return base | ADMIN_USER_SCOPES if is_admin else base


def effective(scopes: frozenset[Scope], role: Role | None, is_admin: bool) -> frozenset[Scope]:
    """A key's rights: what it was granted, limited by what its owner may do now."""
    return scopes & role_scopes(role, is_admin=is_admin)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: an API key, its owner and its project."""

    key_id: str
    user_id: str
    is_admin: bool
    project_id: str
    team_id: str
    mode: Mode
    role: Role | None
    scopes: frozenset[Scope]
    key_expires_at: datetime | None = None
    source_ip: str | None = None  # where the request came from (for the admin log)
    # Read with the key (and cached with it): why the account may not run anything, if so,
    # whether its processing is restricted (no new sandboxes), and whether its project keeps an
    # exec audit trail.
    suspended: str | None = None
    restricted: bool = False
    audit_exec: bool = False
    rights: frozenset[Scope] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rights", effective(self.scopes, self.role, self.is_admin))

    def require(self, scope: Scope) -> None:
        """Raise 403 unless the key may do this in its own project."""
        if scope not in self.rights:
            raise forbidden(scope)

    def rights_in(self, role: Role | None) -> frozenset[Scope]:
        """Rights of this key when acting in a team where its owner has `role`."""
        return effective(self.scopes, role, self.is_admin)


def forbidden(scope: Scope) -> HutchError:
    """The 403 for a missing right, naming it."""
    return HutchError(
        ErrorCode.forbidden,
        f"this API key lacks the {scope.value!r} permission (its scopes ∩ its owner's role)",
    )
