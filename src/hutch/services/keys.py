"""API keys: format and checksum, keyed hashing, authentication, create/rotate/revoke."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import zlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from hutch.db.models import ApiKeyRow, MemberRow, ProjectRow, UserRow
from hutch.db.privacy import UserPrivacyRow
from hutch.ids import new_id
from hutch.models.api import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRotate,
    Mode,
    Page,
    Role,
    Scope,
)
from hutch.models.common import ErrorCode, HutchError
from hutch.services.accounts import role_of
from hutch.services.audit import AdminLog
from hutch.services.clock import Clock
from hutch.services.pagination import paginate
from hutch.services.permissions import Principal, forbidden, role_scopes
from hutch.services.suspensions import suspension_of

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LEN = 32  # 32 base62 characters ≈ 190 bits
CHECKSUM_LEN = 6  # 62**6 > 2**32, so any CRC32 fits
MAX_KEY_LEN = 128
_KEY_RE = re.compile(rf"^sk_(live|test)_[0-9A-Za-z]{{{30 + CHECKSUM_LEN},{MAX_KEY_LEN}}}$")
DISPLAY_PREFIX_LEN = 12  # "sk_live_" and four random characters
LAST_USED_EVERY = timedelta(seconds=60)


def _base62(n: int, width: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out)).rjust(width, "0")


def checksum(body: str) -> str:
    """Six base62 characters of the CRC32 of everything before them."""
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LEN)


def generate(mode: Mode) -> str:
    """A new key: `sk_<mode>_`, random base62 characters, then their checksum."""
    body = f"sk_{mode.value}_" + "".join(secrets.choice(BASE62) for _ in range(RANDOM_LEN))
    return body + checksum(body)


def is_well_formed(key: str) -> bool:
    """Whether `key` looks like a Hutch key and its checksum matches (no database needed)."""
    if not _KEY_RE.match(key):
        return False
    body, check = key[:-CHECKSUM_LEN], key[-CHECKSUM_LEN:]
    return hmac.compare_digest(checksum(body), check)


def key_mode(key: str) -> Mode:
    """The mode a well-formed key was made for."""
    return Mode.test if key.startswith("sk_test_") else Mode.live


def display(prefix: str, last4: str) -> str:
    """How a key is shown after creation."""
    return f"{prefix}…{last4}"


def load_pepper(data_dir: Path, configured: str | None = None) -> bytes:
    """The server-side HMAC secret: configured, or `DATA_DIR/pepper` (created 0600 once)."""
    if configured:
        return configured.encode()
    path = data_dir / "pepper"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pepper = path.read_bytes()
        if len(pepper) < 32:
            raise RuntimeError(f"{path} has under 32 bytes; refusing a weak pepper") from None
        return pepper
    pepper = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(pepper)
    return pepper


def _unauthenticated(detail: str) -> HutchError:
    return HutchError(ErrorCode.unauthenticated, detail, headers={"WWW-Authenticate": "Bearer"})


def _unauthenticated_as(code: ErrorCode, detail: str) -> HutchError:
    return HutchError(code, detail, headers={"WWW-Authenticate": "Bearer"})


def _not_found(what: str = "API key") -> HutchError:
    return HutchError(ErrorCode.not_found, f"{what} not found")


class KeyService:
    """Issue, authenticate, list, rotate and revoke API keys."""

    def __init__(self, pepper: bytes, clock: Clock, admin_log: AdminLog | None = None) -> None:
        self._pepper = pepper
        self.clock = clock
        self.admin_log = admin_log

    def _audit(
        self, session: Session, actor: Principal, action: str, key_id: str, details: dict[str, str]
    ) -> None:
        if self.admin_log is not None:
            self.admin_log.record_for(session, actor, action, "api_key", key_id, details)

    def hash(self, key: str) -> str:
        """HMAC-SHA256 of a key with the server pepper: the only form ever stored."""
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    # --- hot path ---

    def authenticate(self, session: Session, key: str | None) -> Principal:
        """Resolve a presented key to its principal with one indexed lookup by HMAC."""
        if not key:
            raise _unauthenticated("no API key: send 'Authorization: Bearer sk_…' or 'X-API-Key'")
        if not is_well_formed(key):
            raise _unauthenticated("the API key is malformed (bad prefix, length or checksum)")
        member = and_(
            MemberRow.team_id == ProjectRow.team_id, MemberRow.user_id == ApiKeyRow.user_id
        )
        row = session.execute(
            select(
                ApiKeyRow,
                UserRow.is_admin,
                UserRow.disabled_at,
                ProjectRow.team_id,
                ProjectRow.audit_exec,
                MemberRow.role,
                UserPrivacyRow.erased_at,
                UserPrivacyRow.objections,
                UserPrivacyRow.restricted_at,
            )
            .join(UserRow, UserRow.id == ApiKeyRow.user_id)
            .join(ProjectRow, ProjectRow.id == ApiKeyRow.project_id)
            .outerjoin(MemberRow, member)
            .outerjoin(UserPrivacyRow, UserPrivacyRow.user_id == ApiKeyRow.user_id)
            .where(ApiKeyRow.key_hash == self.hash(key))
        ).one_or_none()
        if row is None:
            raise _unauthenticated("the API key is not valid")
        (
            k,
            is_admin,
            disabled_at,
            team_id,
            audit_exec,
            role,
            erased_at,
            objections,
            restricted_at,
        ) = row
        now = self.clock.now()
        if erased_at is not None:
            raise _unauthenticated_as(
                ErrorCode.account_erased, "the account owning this key was erased"
            )
        if k.revoked_at is not None:
            raise HutchError(ErrorCode.key_revoked, "this API key was revoked")
        if k.expires_at is not None and k.expires_at <= now:
            raise HutchError(ErrorCode.key_expired, "this API key expired (rotated or past expiry)")
        if disabled_at is not None:
            raise HutchError(
                ErrorCode.account_restricted, "the account owning this key is disabled"
            )
        if k.last_used_at is None or now - k.last_used_at >= LAST_USED_EVERY:
            # At most one write per key per minute keeps the hot path read-only.
            session.execute(
                update(ApiKeyRow)
                .where(
                    ApiKeyRow.id == k.id,
                    or_(
                        ApiKeyRow.last_used_at.is_(None),
                        ApiKeyRow.last_used_at < now - LAST_USED_EVERY,
                    ),
                )
                .values(last_used_at=now)
                # Who the key is and what it may do are unchanged: keep the auth cache.
                .execution_options(hutch_auth_neutral=True)
            )
            session.commit()
        actor = Principal(
            key_id=k.id,
            user_id=k.user_id,
            is_admin=is_admin,
            project_id=k.project_id,
            team_id=team_id,
            mode=Mode(k.mode),
            role=Role(role) if role else None,
            scopes=frozenset(_known_scopes(k.scopes)),
            key_expires_at=k.expires_at,
            # The exec trail is optional processing: a user who objected is not recorded.
            audit_exec=bool(audit_exec) and "exec_audit" not in (objections or ()),
            restricted=restricted_at is not None,
        )
        return replace(actor, suspended=suspension_of(session, actor))

    # --- management ---

    def issue(
        self,
        session: Session,
        *,
        user_id: str,
        project_id: str,
        name: str,
        mode: Mode,
        scopes: frozenset[Scope],
    ) -> tuple[ApiKeyRow, str]:
        """Insert a new key (no permission checks: callers did them) and return it once."""
        raw = generate(mode)
        row = ApiKeyRow(
            id=new_id("key"),
            user_id=user_id,
            project_id=project_id,
            name=name,
            mode=mode.value,
            scopes=sorted(s.value for s in scopes),
            key_hash=self.hash(raw),
            prefix=raw[:DISPLAY_PREFIX_LEN],
            last4=raw[-4:],
            created_at=self.clock.now(),
        )
        session.add(row)
        session.flush()
        return row, raw

    def create(self, session: Session, actor: Principal, req: ApiKeyCreate) -> ApiKeyCreated:
        """Create a key for the caller (or, with keys:admin, another member) in a project."""
        project_id = req.project_id or actor.project_id
        team_id = session.scalar(select(ProjectRow.team_id).where(ProjectRow.id == project_id))
        role = role_of(session, team_id, actor.user_id) if team_id else None
        if team_id is None or role is None:
            raise _not_found("project")
        rights = actor.rights_in(role)
        if Scope.keys_write not in rights:
            raise forbidden(Scope.keys_write)
        user_id = req.user_id or actor.user_id
        target_role: Role | None = role
        target_admin = actor.is_admin
        if user_id != actor.user_id:
            if Scope.keys_admin not in rights:
                raise forbidden(Scope.keys_admin)
            target_role = role_of(session, team_id, user_id)
            target_admin = bool(
                session.scalar(select(UserRow.is_admin).where(UserRow.id == user_id))
            )
            if target_role is None:
                raise _not_found("user (in this project's team)")
        if actor.mode is Mode.test and req.mode is Mode.live:
            raise HutchError(ErrorCode.forbidden, "a test-mode key can only create test-mode keys")
        if req.scopes is None:
            scopes = rights & role_scopes(target_role, is_admin=target_admin)
        else:
            scopes = frozenset(req.scopes)
            if extra := scopes - rights:
                raise HutchError(
                    ErrorCode.forbidden,
                    "a key cannot be given more than its creator may do; not allowed: "
                    + ", ".join(sorted(s.value for s in extra)),
                )
        row, raw = self.issue(
            session,
            user_id=user_id,
            project_id=project_id,
            name=req.name,
            mode=req.mode,
            scopes=scopes,
        )
        self._audit(
            session,
            actor,
            "key.create",
            row.id,
            {"user_id": user_id, "project_id": project_id, "mode": req.mode.value},
        )
        session.commit()
        return ApiKeyCreated(**to_wire(row).model_dump(), key=raw)

    def list(
        self, session: Session, actor: Principal, *, limit: int, cursor: str | None
    ) -> Page[ApiKey]:
        """Keys of the caller's project: all of them with keys:admin, else the caller's own."""
        stmt = select(ApiKeyRow).where(ApiKeyRow.project_id == actor.project_id)
        if Scope.keys_admin not in actor.rights:
            actor.require(Scope.keys_write)
            stmt = stmt.where(ApiKeyRow.user_id == actor.user_id)
        rows, nxt = paginate(session, stmt, ApiKeyRow.id, limit=limit, cursor=cursor)
        return Page[ApiKey](items=[to_wire(r) for r in rows], next_cursor=nxt)

    def _editable(self, session: Session, actor: Principal, key_id: str) -> ApiKeyRow:
        row = session.get(ApiKeyRow, key_id, with_for_update=True)
        if row is None or row.project_id != actor.project_id:
            raise _not_found()
        actor.require(Scope.keys_write if row.user_id == actor.user_id else Scope.keys_admin)
        return row

    def rotate(
        self, session: Session, actor: Principal, key_id: str, req: ApiKeyRotate
    ) -> ApiKeyCreated:
        """Issue a successor; the old key keeps working for the grace period, then expires."""
        old = self._editable(session, actor, key_id)
        now = self.clock.now()
        if old.revoked_at is not None or old.replaced_by is not None:
            raise HutchError(ErrorCode.conflict, "this key was already revoked or rotated")
        if old.expires_at is not None and old.expires_at <= now:
            raise HutchError(ErrorCode.conflict, "this key has expired; create a new one")
        new, raw = self.issue(
            session,
            user_id=old.user_id,
            project_id=old.project_id,
            name=old.name,
            mode=Mode(old.mode),
            scopes=frozenset(_known_scopes(old.scopes)),
        )
        grace_end = now + timedelta(seconds=req.grace_s)
        old.expires_at = grace_end if old.expires_at is None else min(old.expires_at, grace_end)
        old.replaced_by = new.id
        self._audit(
            session, actor, "key.rotate", old.id, {"successor": new.id, "grace_s": str(req.grace_s)}
        )
        session.commit()
        return ApiKeyCreated(**to_wire(new).model_dump(), key=raw)

    def revoke(self, session: Session, actor: Principal, key_id: str) -> None:
        """Revoke a key at once (idempotent)."""
        row = self._editable(session, actor, key_id)
        if row.revoked_at is None:
            row.revoked_at = self.clock.now()
            self._audit(session, actor, "key.revoke", row.id, {"user_id": row.user_id})
        session.commit()


def _known_scopes(values: list[str]) -> list[Scope]:
    # Scopes dropped from a later version simply stop granting anything.
    known = {s.value for s in Scope}
    return [Scope(v) for v in values if v in known]


def to_wire(row: ApiKeyRow) -> ApiKey:
    """The listable view of a key row."""
    return ApiKey(
        key_id=row.id,
        name=row.name,
        user_id=row.user_id,
        project_id=row.project_id,
        mode=Mode(row.mode),
        scopes=_known_scopes(row.scopes),
        display=display(row.prefix, row.last4),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        replaced_by=row.replaced_by,
    )
