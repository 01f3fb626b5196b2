"""`Hutch`: the blocking client for account resources (keys, projects, users, teams, me,
templates). Their shapes belong to the server, so answers are returned as plain JSON dicts."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

from hutch.models.api import Role
from hutch.sdk import _ops
from hutch.sdk._http import Call, SyncHttp, no_content
from hutch.sdk.config import ConnectionConfig

MAX_PAGES = 10_000


def _json(resp: Any) -> Any:
    return resp.json()


def _bytes(resp: Any) -> bytes:
    return bytes(resp.content)


def _secret_path(project_id: str, name: str = "") -> str:
    base = f"/v1/projects/{quote(project_id, safe='')}/secrets"
    return f"{base}/{quote(name, safe='')}" if name else base


def _team_path(team_id: str, user_id: str | None = None) -> str:
    base = f"/v1/teams/{quote(team_id, safe='')}"
    return base if user_id is None else f"{base}/members/{quote(user_id, safe='')}"


def _user_path(user_id: str | None) -> str:
    return "/v1/me" if user_id is None else f"/v1/users/{quote(user_id, safe='')}"


def _items(page: Any) -> tuple[list[dict[str, Any]], str | None]:
    """A list answer is either a bare JSON list or `{items, next_cursor}`."""
    if isinstance(page, list):
        return page, None
    if isinstance(page, dict) and isinstance(page.get("items"), list):
        return page["items"], page.get("next_cursor")
    raise TypeError(f"unexpected list answer from the API: {type(page).__name__}")


class Hutch:
    """Account administration over the REST API."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        config: ConnectionConfig | None = None,
    ) -> None:
        self.config = config or ConnectionConfig.resolve(api_url, api_key, request_timeout)
        self._http = SyncHttp(self.config)

    def _list(self, path: str, **filters: str) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params = tuple((k, v) for k, v in filters.items()) + (
                (("cursor", cursor),) if cursor else ()
            )
            items, cursor = _items(self._http.send(_ops.get_json(path, params)))
            yield from items
            if not cursor:
                return

    def me(self) -> dict[str, Any]:
        """Who the key belongs to (user, project, scopes)."""
        return self._http.send(_ops.get_json("/v1/me"))

    # keys
    def create_key(
        self,
        name: str,
        scopes: list[str] | None = None,
        mode: str = "live",
        *,
        project_id: str | None = None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Create an API key; the answer's `key` is the secret and is shown only this once."""
        body: dict[str, Any] = {"name": name, "mode": mode}
        if scopes:
            body["scopes"] = scopes
        if project_id:
            body["project_id"] = project_id
        if user_id:
            body["user_id"] = user_id
        return self._http.send(_ops.create_json("/v1/keys", body))

    def list_keys(self) -> list[dict[str, Any]]:
        """Keys of the project (never their secrets)."""
        return list(self._list("/v1/keys"))

    def rotate_key(self, key_id: str, grace_s: int | None = None) -> dict[str, Any]:
        """Issue a new secret; the old one keeps working for `grace_s` seconds."""
        body = {} if grace_s is None else {"grace_s": grace_s}
        path = f"/v1/keys/{quote(key_id, safe='')}/rotate"
        return self._http.send(_ops.post_json(path, body))

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key at once."""
        self._http.send(_ops.delete(f"/v1/keys/{quote(key_id, safe='')}"))

    # projects, users, teams
    def list_projects(self) -> list[dict[str, Any]]:
        """Projects visible to the key."""
        return list(self._list("/v1/projects"))

    def create_project(self, name: str, **extra: Any) -> dict[str, Any]:
        """Create a project."""
        body = {"name": name, **extra}
        return self._http.send(_ops.create_json("/v1/projects", body))

    def list_users(self) -> list[dict[str, Any]]:
        """Users (admin keys only)."""
        return list(self._list("/v1/users"))

    def create_user(self, email: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
        """Create a user (admin keys only)."""
        body: dict[str, Any] = {"email": email, **extra}
        if name:
            body["name"] = name
        return self._http.send(_ops.create_json("/v1/users", body))

    def teams(self) -> list[dict[str, Any]]:
        """Teams the key's user belongs to, each with that user's `role` in it."""
        return list(self._list("/v1/teams"))

    def list_teams(self) -> list[dict[str, Any]]:
        """The same as `teams()`."""
        return self.teams()

    def create_team(self, name: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Create a team; the key's user becomes its owner."""
        call = _ops.create_json("/v1/teams", {"name": name}, idempotency_key)
        return self._http.send(call)

    def get_team(self, team_id: str) -> dict[str, Any]:
        """One of the key's user's teams."""
        return self._http.send(_ops.get_json(_team_path(team_id)))

    def members(self, team_id: str) -> list[dict[str, Any]]:
        """Members of a team: `user_id` and `role` of each."""
        return list(self._list(_team_path(team_id) + "/members"))

    def add_member(
        self,
        team_id: str,
        user_id: str,
        role: Role | str = Role.member,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Add a user to a team with a role: owner, admin, member or viewer."""
        body = {"user_id": user_id, "role": _ops.choice(Role, role, "role").value}
        call = _ops.create_json(_team_path(team_id) + "/members", body, idempotency_key)
        return self._http.send(call)

    def set_role(self, team_id: str, user_id: str, role: Role | str) -> dict[str, Any]:
        """Change a member's role (a team keeps at least one owner)."""
        body = {"role": _ops.choice(Role, role, "role").value}
        return self._http.send(_ops.patch_json(_team_path(team_id, user_id), body))

    def remove_member(self, team_id: str, user_id: str) -> None:
        """Remove a user from a team (a team keeps at least one owner)."""
        self._http.send(_ops.delete(_team_path(team_id, user_id)))

    def update_project(self, project_id: str, **changes: Any) -> dict[str, Any]:
        """Rename a project or change its settings (e.g. `audit_exec=True`)."""
        path = f"/v1/projects/{quote(project_id, safe='')}"
        return self._http.send(_ops.patch_json(path, changes))

    # audit and administration
    def list_execs(self, **filters: str) -> Iterator[dict[str, Any]]:
        """The project's exec trail, newest first (filters: sandbox_id, command, since, until)."""
        return self._list("/v1/audit/execs", **filters)

    def export_execs(self, fmt: str = "jsonl", **filters: str) -> str:
        """The project's exec trail as JSON Lines or CSV text."""
        params = (("format", fmt), *filters.items())
        return self._http.send(_ops.get_text("/v1/audit/execs/export", params))

    def admin_log(self, after_seq: int | None = None, limit: int = 100) -> dict[str, Any]:
        """One page of the admin log (server administrators)."""
        params: tuple[tuple[str, str], ...] = (("limit", str(limit)),)
        if after_seq is not None:
            params += (("after_seq", str(after_seq)),)
        return self._http.send(_ops.get_json("/v1/audit/admin-log", params))

    def verify_admin_log(self) -> dict[str, Any]:
        """Have the server check the admin log's chain and signed checkpoints."""
        return self._http.send(_ops.get_json("/v1/audit/admin-log/verify"))

    def _admin(self, kind: str, subject_id: str, action: str, reason: str) -> Any:
        path = f"/v1/admin/{kind}/{quote(subject_id, safe='')}/{action}"
        return self._http.send(_ops.post_json(path, {"reason": reason}))

    def suspend(self, kind: str, subject_id: str, reason: str) -> dict[str, Any]:
        """Suspend a user or team (`kind`: users or teams)."""
        answer: dict[str, Any] = self._admin(kind, subject_id, "suspend", reason)
        return answer

    def unsuspend(self, kind: str, subject_id: str, reason: str) -> None:
        """Reinstate a suspended user or team."""
        path = f"/v1/admin/{kind}/{quote(subject_id, safe='')}/unsuspend"
        self._http.send(_ops.post_no_content(path, {"reason": reason}))

    def terminate(self, kind: str, subject_id: str, reason: str) -> dict[str, Any]:
        """Terminate a user or team for good (keys revoked, sandboxes killed)."""
        answer: dict[str, Any] = self._admin(kind, subject_id, "terminate", reason)
        return answer

    # project secrets (values are write-only)
    def set_secret(self, project_id: str, name: str, value: str) -> dict[str, Any]:
        """Create or replace a secret; the answer holds its metadata, never the value."""
        call = Call("PUT", _secret_path(project_id, name), _json, json={"value": value})
        return self._http.send(call)

    def list_secrets(self, project_id: str) -> list[dict[str, Any]]:
        """Names and metadata of a project's secrets."""
        return list(self._list(_secret_path(project_id)))

    def delete_secret(self, project_id: str, name: str) -> None:
        """Delete a secret."""
        self._http.send(no_content("DELETE", _secret_path(project_id, name)))

    def rewrap_secrets(self, rotate: bool = False) -> dict[str, Any]:
        """Rewrap every data key under the current KEK (admin keys; optionally rotate first)."""
        return self._http.send(_ops.post_json("/v1/secrets/rewrap", {"rotate": rotate}))

    # data-subject rights (`user_id` None: the key's own user; otherwise admin keys only)
    def update_profile(self, user_id: str | None = None, **fields: str) -> dict[str, Any]:
        """Correct the profile (name, email)."""
        return self._http.send(Call("PATCH", _user_path(user_id), _json, json=fields))

    def export_data(self, user_id: str | None = None) -> bytes:
        """Everything held about the user, as zip bytes."""
        return self._http.send(Call("GET", _user_path(user_id) + "/export", _bytes))

    def privacy_status(self, user_id: str | None = None) -> dict[str, Any]:
        """Restriction, objections and erasure state."""
        return self._http.send(_ops.get_json(_user_path(user_id) + "/privacy"))

    def restrict(self, on: bool = True, user_id: str | None = None) -> dict[str, Any]:
        """Restrict processing (no new sandboxes), or lift the restriction."""
        method = "PUT" if on else "DELETE"
        return self._http.send(Call(method, _user_path(user_id) + "/restriction", _json))

    def set_objections(self, purposes: list[str], user_id: str | None = None) -> dict[str, Any]:
        """Object to optional processing (replaces the previous list)."""
        call = Call("PUT", _user_path(user_id) + "/objections", _json, json={"purposes": purposes})
        return self._http.send(call)

    def erase_account(self, confirm_email: str, user_id: str | None = None) -> dict[str, Any]:
        """Erase the account (access ends at once; data purged within 30 days)."""
        call = Call(
            "DELETE",
            _user_path(user_id),
            _json,
            params=(("confirm", confirm_email),),
            idempotent=False,
        )
        return self._http.send(call)

    def list_templates(self) -> list[dict[str, Any]]:
        """Templates sandboxes can start from."""
        return list(self._list("/v1/templates"))

    # billing
    def usage(
        self,
        group_by: str = "day",
        *,
        start: str | None = None,
        end: str | None = None,
        project_id: str | None = None,
    ) -> dict[str, Any]:
        """Usage grouped by day, project, sandbox or size, with costs in micro-dollars."""
        params = [("group_by", group_by)]
        params += [
            (k, v) for k, v in (("start", start), ("end", end), ("project_id", project_id)) if v
        ]
        return self._http.send(_ops.get_json("/v1/billing/usage", tuple(params)))

    def usage_csv(self, *, start: str | None = None, end: str | None = None) -> str:
        """Every usage record in the range as CSV text."""
        params = tuple((k, v) for k, v in (("start", start), ("end", end)) if v)
        return self._http.send(_ops.get_text("/v1/billing/usage.csv", params))

    def billing_summary(self) -> dict[str, Any]:
        """Balance, cost so far this month, payment method and warnings."""
        return self._http.send(_ops.get_json("/v1/billing/summary"))

    def credits(self) -> list[dict[str, Any]]:
        """Credit grants and what is left of them."""
        return list(self._list("/v1/billing/credits"))

    def grant_credit(self, team_id: str, amount: str, **extra: Any) -> dict[str, Any]:
        """Give a team credit in dollars, e.g. "25.00" (server administrators)."""
        body = {"team_id": team_id, "amount": amount, **extra}
        return self._http.send(_ops.post_json("/v1/billing/credits", body))

    def invoices(self) -> list[dict[str, Any]]:
        """This month's upcoming invoice, then finalized ones."""
        return list(self._list("/v1/billing/invoices"))

    def setup_payment(self) -> dict[str, Any]:
        """A link to add a payment method (or, offline, invoice terms for administrators)."""
        return self._http.send(_ops.post_json("/v1/billing/payment-method", {}))

    def close(self) -> None:
        """Release HTTP connections."""
        self._http.close()

    def __enter__(self) -> Hutch:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
