"""Data-subject rights for the caller (`/v1/me…`) or, for server administrators, any user
(`/v1/users/{user_id}…`): rectify, export, restrict, object, erase."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from hutch.api.deps import BODY_MAX, DB, Actor, SourceIP, Svc
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.models.api import User
from hutch.models.privacy import Objections, PrivacyStatus, ProfileUpdate

router = APIRouter(tags=["privacy"], responses=PROBLEM_RESPONSES, max_body_size=BODY_MAX)
UserId = Annotated[str, Path(max_length=64)]
Confirm = Annotated[
    str, Query(max_length=254, description="The account's email address, to confirm the erasure")
]
ZIP: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "A zip of JSON files"}
}
ME, USER = "/v1/me", "/v1/users/{user_id}"


def _zip(user_id: str, data: bytes) -> Response:
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="hutch-export-{user_id}.zip"'},
    )


# --- the caller ---


@router.patch(ME, response_model=User)
def rectify_me(body: ProfileUpdate, actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> User:
    """Correct your name or email."""
    return svc.privacy.rectify(db, actor, None, body, source_ip=ip)


@router.delete(ME, status_code=202, response_model=PrivacyStatus)
async def erase_me(confirm: Confirm, actor: Actor, svc: Svc, ip: SourceIP) -> PrivacyStatus:
    """Erase your account: access ends now, sandboxes are killed, personal data is purged
    within 30 days (billing records are kept pseudonymised)."""
    return await svc.privacy.erase(actor, None, confirm, source_ip=ip)


@router.get(ME + "/privacy", response_model=PrivacyStatus)
def my_privacy(actor: Actor, db: DB, svc: Svc) -> PrivacyStatus:
    """Your restriction, objections and erasure state."""
    return svc.privacy.status(db, actor)


@router.get(ME + "/export", response_class=Response, responses=ZIP)
def export_me(actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> Response:
    """Everything Hutch holds about you, as a zip of JSON files."""
    return _zip(*svc.privacy.export(db, actor, None, source_ip=ip))


@router.put(ME + "/restriction", response_model=PrivacyStatus)
def restrict_me(actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> PrivacyStatus:
    """Restrict processing: no new sandboxes, data kept."""
    return svc.privacy.restrict(db, actor, None, True, source_ip=ip)


@router.delete(ME + "/restriction", response_model=PrivacyStatus)
def unrestrict_me(actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> PrivacyStatus:
    """Lift the restriction."""
    return svc.privacy.restrict(db, actor, None, False, source_ip=ip)


@router.put(ME + "/objections", response_model=PrivacyStatus)
def object_me(body: Objections, actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> PrivacyStatus:
    """Object to optional processing (replaces the previous list)."""
    return svc.privacy.set_objections(db, actor, None, body.purposes, source_ip=ip)


# --- server administrators, for any user ---


@router.patch(USER, response_model=User)
def rectify_user(
    user_id: UserId, body: ProfileUpdate, actor: Actor, db: DB, svc: Svc, ip: SourceIP
) -> User:
    """Correct a user's name or email."""
    return svc.privacy.rectify(db, actor, user_id, body, source_ip=ip)


@router.delete(USER, status_code=202, response_model=PrivacyStatus)
async def erase_user(
    user_id: UserId, confirm: Confirm, actor: Actor, svc: Svc, ip: SourceIP
) -> PrivacyStatus:
    """Erase a user's account."""
    return await svc.privacy.erase(actor, user_id, confirm, source_ip=ip)


@router.get(USER + "/privacy", response_model=PrivacyStatus)
def user_privacy(user_id: UserId, actor: Actor, db: DB, svc: Svc) -> PrivacyStatus:
    """A user's restriction, objections and erasure state."""
    return svc.privacy.status(db, actor, user_id)


@router.get(USER + "/export", response_class=Response, responses=ZIP)
def export_user(user_id: UserId, actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> Response:
    """Everything Hutch holds about a user."""
    return _zip(*svc.privacy.export(db, actor, user_id, source_ip=ip))


@router.put(USER + "/restriction", response_model=PrivacyStatus)
def restrict_user(user_id: UserId, actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> PrivacyStatus:
    """Restrict processing of a user's account."""
    return svc.privacy.restrict(db, actor, user_id, True, source_ip=ip)


@router.delete(USER + "/restriction", response_model=PrivacyStatus)
def unrestrict_user(user_id: UserId, actor: Actor, db: DB, svc: Svc, ip: SourceIP) -> PrivacyStatus:
    """Lift a user's restriction."""
    return svc.privacy.restrict(db, actor, user_id, False, source_ip=ip)


@router.put(USER + "/objections", response_model=PrivacyStatus)
def object_user(
    user_id: UserId, body: Objections, actor: Actor, db: DB, svc: Svc, ip: SourceIP
) -> PrivacyStatus:
    """Record a user's objections."""
    return svc.privacy.set_objections(db, actor, user_id, body.purposes, source_ip=ip)
