"""Callables other services provide to privacy and secrets, defaulting to doing nothing."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session


class AdminLogFn(Protocol):
    """Record one administrative action in the admin audit log, in the caller's session."""

    def __call__(
        self,
        session: Session,
        *,
        actor_user_id: str,
        action: str,
        target_type: str,
        target_id: str,
        source_ip: str | None,
        details: dict[str, str] | None = None,
    ) -> object: ...


class PseudonymiseFn(Protocol):
    """Replace a user's identity in billing records by a pseudonym (records are kept)."""

    def __call__(self, user_id: str) -> object: ...


def noop_admin_log(
    session: Session,
    *,
    actor_user_id: str,
    action: str,
    target_type: str,
    target_id: str,
    source_ip: str | None,
    details: dict[str, str] | None = None,
) -> None:
    """An admin log that records nothing (until one is wired in)."""


def noop_pseudonymise(user_id: str) -> None:
    """A billing pseudonymiser with nothing to do (until billing is wired in)."""
