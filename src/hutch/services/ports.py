"""Exposed sandbox ports: who may reach them (key, signed token, public), their settings, and
the host names of host-based routing.

A port is private unless its owner made it public. A private port is reached with an API key
of the sandbox's project holding `ports:access` (or `sandboxes:write`), or with a signed token:
an HMAC over (sandbox id, port, expiry) with a server secret, so checking one needs no database
and a token for one port opens no other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from hutch.db.models import SandboxRow
from hutch.db.ports import SandboxPortRow
from hutch.db.session import Database
from hutch.ids import is_id
from hutch.models.api import Scope
from hutch.models.common import ErrorCode, HutchError, SandboxState
from hutch.models.ports import PORT_MAX, PORT_MIN
from hutch.services.clock import Clock
from hutch.services.keys import KeyService
from hutch.services.permissions import Principal, forbidden
from hutch.services.sandboxes import SandboxService, sandbox_not_found
from hutch.services.suspensions import refuse_if_suspended, sandbox_suspension

TOKEN_VERSION = "v1"
_TOKEN_RE = re.compile(r"^v1\.(\d{1,12})\.([A-Za-z0-9_-]{43})$")
# `{port}-sbx-{ulid}` (canonical: DNS names have no `_`) or `{port}-sbx_{ulid}`.
_HOST_LABEL_RE = re.compile(r"^(\d{1,5})-sbx[-_]([0-9a-hjkmnp-tv-z]{26})$")


def port_secret(pepper: bytes) -> bytes:
    """The token key, derived from the server's key pepper (one secret to keep, not two)."""
    return hmac.new(pepper, b"hutch port access tokens v1", hashlib.sha256).digest()


class PortTokens:
    """Mints and checks signed port tokens `v1.<expiry unix seconds>.<HMAC-SHA256, base64url>`."""

    def __init__(self, secret: bytes, clock: Clock) -> None:
        self._secret = secret
        self.clock = clock

    def _sig(self, sandbox_id: str, port: int, exp: int) -> str:
        msg = f"hutch-port:{TOKEN_VERSION}:{sandbox_id}:{port}:{exp}".encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def mint(self, sandbox_id: str, port: int, ttl_s: int) -> tuple[str, datetime]:
        """A token for one port of one sandbox, valid `ttl_s` seconds from now."""
        exp = int(self.clock.now().timestamp()) + ttl_s
        token = f"{TOKEN_VERSION}.{exp}.{self._sig(sandbox_id, port, exp)}"
        return token, datetime.fromtimestamp(exp, UTC)

    def check(self, token: str, sandbox_id: str, port: int) -> datetime:
        """The token's expiry if it is genuine, for this port and not expired; else
        403 `token_invalid` (forged, altered, another port) or 401 `token_expired`."""
        m = _TOKEN_RE.match(token)
        if m is None or not hmac.compare_digest(
            m.group(2), self._sig(sandbox_id, port, int(m.group(1)))
        ):
            raise HutchError(
                ErrorCode.token_invalid,
                "the port access token is not valid for this sandbox port",
            )
        expires = datetime.fromtimestamp(int(m.group(1)), UTC)
        if expires <= self.clock.now():
            raise HutchError(
                ErrorCode.token_expired,
                f"the port access token expired at {expires.isoformat()}; mint a new one",
            )
        return expires


def host_label(sandbox_id: str, port: int) -> str:
    """The first DNS label of a port's host name: `8000-sbx-01j…` (ids hold `_`, DNS does not)."""
    return f"{port}-{sandbox_id.replace('_', '-')}"


def parse_host(host: str, domain: str) -> tuple[str, int] | None:
    """(sandbox id, port) if `host` (a Host header, maybe with :port) names a sandbox port
    under `domain`; None for any other host."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    suffix = "." + domain.lower().strip(".")
    if not name.endswith(suffix):
        return None
    m = _HOST_LABEL_RE.match(name[: -len(suffix)])
    if m is None:
        return None
    port = int(m.group(1))
    if not PORT_MIN <= port <= PORT_MAX:
        return None
    return f"sbx_{m.group(2)}", port


def port_access(actor: Principal) -> None:
    """Raise 403 unless the key may reach sandbox ports (`ports:access` or `sandboxes:write`)."""
    if not {Scope.ports_access, Scope.sandboxes_write} & actor.rights:
        raise forbidden(Scope.ports_access)


@dataclass(frozen=True)
class Access:
    """Why a request may reach a port; `expires_at` is set when a token granted it."""

    via: str  # "public", "key" or "token"
    key_id: str | None = None
    token: str | None = None
    expires_at: datetime | None = None


class PortService:
    """Port settings and the access decision for proxied requests (blocking: run in threads)."""

    def __init__(
        self, db: Database, sandboxes: SandboxService, keys: KeyService, tokens: PortTokens
    ) -> None:
        self.db = db
        self.sandboxes = sandboxes
        self.keys = keys
        self.tokens = tokens

    # --- settings ---

    def _own_row(self, actor: Principal, sandbox_id: str) -> SandboxRow:
        if not is_id(sandbox_id, "sbx"):  # never stored; and a NUL would upset PostgreSQL
            raise sandbox_not_found(sandbox_id)
        with self.db.session() as s:
            row = s.get(SandboxRow, sandbox_id)
            if row is None or row.project_id != actor.project_id or row.mode != actor.mode.value:
                raise sandbox_not_found(sandbox_id)
            return row

    def is_public(self, sandbox_id: str, port: int) -> bool:
        """Whether the port was made public."""
        with self.db.session() as s:
            row = s.get(SandboxPortRow, (sandbox_id, port))
            return bool(row is not None and row.public)

    def get(self, actor: Principal, sandbox_id: str, port: int) -> bool:
        """Whether a port of the caller's sandbox is public."""
        actor.require(Scope.sandboxes_read)
        self._own_row(actor, sandbox_id)
        return self.is_public(sandbox_id, port)

    def list_public(self, actor: Principal, sandbox_id: str) -> list[int]:
        """The public ports of the caller's sandbox."""
        actor.require(Scope.sandboxes_read)
        self._own_row(actor, sandbox_id)
        with self.db.session() as s:
            rows = s.scalars(
                select(SandboxPortRow.port)
                .where(SandboxPortRow.sandbox_id == sandbox_id, SandboxPortRow.public.is_(True))
                .order_by(SandboxPortRow.port)
            )
            return list(rows)

    def set_public(self, actor: Principal, sandbox_id: str, port: int, public: bool) -> bool:
        """Make a port public or private again (persisted; applies to the next request)."""
        actor.require(Scope.sandboxes_write)
        refuse_if_suspended(actor.suspended)
        self._own_row(actor, sandbox_id)
        with self.db.session() as s:
            row = s.get(SandboxPortRow, (sandbox_id, port), with_for_update=True)
            now = self.sandboxes.clock.now()
            if row is None:
                s.add(
                    SandboxPortRow(sandbox_id=sandbox_id, port=port, public=public, updated_at=now)
                )
            else:
                row.public, row.updated_at = public, now
            s.commit()
        return public

    def mint(
        self, actor: Principal, sandbox_id: str, port: int, ttl_s: int
    ) -> tuple[str, datetime]:
        """A signed token for a port of one of the caller's sandboxes."""
        port_access(actor)
        refuse_if_suspended(actor.suspended)
        self._own_row(actor, sandbox_id)
        return self.tokens.mint(sandbox_id, port, ttl_s)

    # --- the access decision ---

    def authorize(
        self,
        sandbox_id: str,
        port: int,
        key: str | None,
        tokens: list[str],
        *,
        actor: Principal | None = None,
    ) -> Access:
        """May this request reach the port? Public ports need nothing; otherwise an API key
        (tenancy and scope checked; another tenant's sandbox is 404) or a valid token. The
        sandbox must be running. Unauthenticated callers learn nothing about the sandbox.

        `actor` is the key as the caller already knows it (from the principal cache); without
        it the key is looked up here. One database session in all.
        """
        if not is_id(sandbox_id, "sbx"):
            raise sandbox_not_found(sandbox_id)
        with self.db.session() as s:
            row = s.get(SandboxRow, sandbox_id)
            setting = s.get(SandboxPortRow, (sandbox_id, port))
            access: Access | None = None
            if setting is not None and setting.public:
                access = Access("public")
            elif key is not None:
                if actor is None:
                    actor = self.keys.authenticate(s, key)
                port_access(actor)
                tenant = (actor.project_id, actor.mode.value)
                if row is None or (row.project_id, row.mode) != tenant:
                    raise sandbox_not_found(sandbox_id)
                refuse_if_suspended(actor.suspended)
                access = Access("key", key_id=actor.key_id)
            elif tokens:
                first: HutchError | None = None
                for t in tokens:  # several cookies may share the name (set by other hosts)
                    try:
                        expires = self.tokens.check(t, sandbox_id, port)
                    except HutchError as e:
                        first = first or e
                        continue
                    access = Access("token", token=t, expires_at=expires)
                    break
                if access is None:
                    assert first is not None
                    raise first
            else:
                raise HutchError(
                    ErrorCode.unauthenticated,
                    "this sandbox port is private: send an API key (Authorization: Bearer sk_…), "
                    "or a signed URL token (?hutch_token=…), or make the port public",
                )
            if row is None:
                raise sandbox_not_found(sandbox_id)
            # A suspended account's sandbox serves nobody: not its public ports, not its tokens.
            refuse_if_suspended(sandbox_suspension(s, sandbox_id))
            if row.state != SandboxState.running.value:
                raise HutchError(
                    ErrorCode.sandbox_not_running,
                    f"sandbox {sandbox_id} is {row.state}, not running",
                )
        return access

    def token_ttl(self, expires_at: datetime) -> int:
        """Seconds left on a token (for the cookie's Max-Age)."""
        return max(0, int((expires_at - self.sandboxes.clock.now()) / timedelta(seconds=1)))
