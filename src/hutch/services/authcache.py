"""Recently authenticated API keys, so the request hot path needs no database round trip.

An entry lives `ttl_s` seconds of the services' clock. Any commit in this process that wrote
users, keys, teams, members, projects, suspensions or privacy state empties the cache at once,
so a revocation, rotation, role change, suspension or restriction made through this process
applies to the very next request; one made by *another* API process applies within `ttl_s`.
A rotated key's grace end is checked on every hit.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from hutch.services.clock import Clock
from hutch.services.permissions import Principal

# Tables whose rows decide who a key is and what it may do.
AUTH_TABLES = frozenset(
    {
        "users",
        "api_keys",
        "teams",
        "team_members",
        "projects",
        "account_suspensions",
        "user_privacy",
    }
)
MAX_ENTRIES = 10_000
_DIRTY = "hutch_auth_dirty"


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    key_expires_at: datetime | None
    fresh_until: datetime


class PrincipalCache:
    """Key hash → principal, bounded and short-lived."""

    def __init__(self, ttl_s: float, clock: Clock) -> None:
        self.ttl = timedelta(seconds=ttl_s)
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # Commits clear from worker threads while requests read on the event loop.
        self._lock = threading.Lock()
        # Bumped by every clear: a lookup that started before a change must not be cached after it.
        self.generation = 0

    def get(self, key_hash: str) -> Principal | None:
        """The cached principal, unless stale or past its key's expiry (then ask the database)."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        now = self.clock.now()
        if entry.fresh_until <= now or (
            entry.key_expires_at is not None and entry.key_expires_at <= now
        ):
            with self._lock:
                self._entries.pop(key_hash, None)
            return None
        return entry.principal

    def put(
        self,
        key_hash: str,
        principal: Principal,
        key_expires_at: datetime | None,
        generation: int,
    ) -> None:
        """Remember a successful authentication that began at `generation`."""
        if self.ttl <= timedelta(0):
            return
        entry = _Entry(principal, key_expires_at, self.clock.now() + self.ttl)
        with self._lock:
            if generation != self.generation:
                return  # something changed while the database was asked
            self._entries[key_hash] = entry
            self._entries.move_to_end(key_hash)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (an account or key changed)."""
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def watch(self, sessions: sessionmaker[Session]) -> None:
        """Clear on every commit of `sessions` that wrote one of AUTH_TABLES."""
        _watchers(sessions).add(self)


# Every cache fed by one session factory. The listeners are installed once per factory: with one
# set per cache, the first to see a commit would consume its "wrote an auth table" mark and the
# other caches on the same database would keep stale principals.
_WATCHERS: weakref.WeakKeyDictionary[sessionmaker[Session], weakref.WeakSet[PrincipalCache]] = (
    weakref.WeakKeyDictionary()
)
_WATCHERS_LOCK = threading.Lock()


def _watchers(sessions: sessionmaker[Session]) -> weakref.WeakSet[PrincipalCache]:
    with _WATCHERS_LOCK:
        caches = _WATCHERS.get(sessions)
        if caches is not None:
            return caches
        caches = _WATCHERS[sessions] = weakref.WeakSet()

    def flushed(session: Session, _ctx: Any) -> None:
        for obj in (*session.new, *session.dirty, *session.deleted):
            if getattr(obj, "__tablename__", None) in AUTH_TABLES:
                session.info[_DIRTY] = True
                return

    def executed(state: ORMExecuteState) -> None:
        if state.execution_options.get("hutch_auth_neutral"):
            return
        if state.is_update or state.is_delete or state.is_insert:
            table = getattr(state.statement, "table", None)
            if getattr(table, "name", None) in AUTH_TABLES:
                state.session.info[_DIRTY] = True

    def committed(session: Session) -> None:
        if session.info.pop(_DIRTY, False):
            for cache in list(caches):
                cache.clear()

    def rolled_back(session: Session) -> None:
        session.info.pop(_DIRTY, None)

    event.listen(sessions, "after_flush", flushed)
    event.listen(sessions, "do_orm_execute", executed)
    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_rollback", rolled_back)
    return caches
