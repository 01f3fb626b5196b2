"""Every API request the SDK makes, as `Call` values: one place for paths, bodies and parsing,
so the sync and async classes are thin shells that only do I/O."""

from __future__ import annotations

import functools
import posixpath
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from hutch.models.common import (
    SANDBOX_USER_HOME,
    ExecUser,
    IsolationClass,
    SandboxState,
    field_errors,
)
from hutch.models.exec import ExecRequest, ExecResult, ProcessInfo, SignalRequest, StdinRequest
from hutch.models.files import Exists, FileInfo, MakeDir, Rename, WriteInfo
from hutch.models.network import NetworkPolicy
from hutch.models.ports import PortInfo, PortToken, PortTokenRequest, PortUpdate
from hutch.models.privacy import check_secret_refs
from hutch.models.sandbox import SandboxSpec, SandboxStats, SetTimeout
from hutch.sdk._http import Call, no_content
from hutch.sdk.exceptions import HutchSDKError, InvalidRequestError
from hutch.sdk.types import SandboxInfo, SandboxPage

# Extra time the HTTP request gets beyond a command's own timeout, so the server can answer
# "timed out" before the client gives up on the connection.
EXEC_GRACE_S = 15.0
# How long a create may take: the server waits up to 120 s for the runner, plus margin.
CREATE_WAIT_S = 150.0

_processes = TypeAdapter(list[ProcessInfo])
_file_infos = TypeAdapter(list[FileInfo])

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=StrEnum)


def checked(fn: Callable[P, R]) -> Callable[P, R]:
    """Arguments are validated here, before any network: a mistake raises InvalidRequestError
    naming the argument and what it allows (as the server's 422 would), never a bare pydantic
    error."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ValidationError as e:
            errors = field_errors([{**d, "loc": ("args", *d["loc"])} for d in e.errors()])
            names = ", ".join(sorted({d["field"] or "arguments" for d in errors}))
            for d in errors:
                d["loc"] = d["loc"][1:]  # the argument, as the server's loc names the field
            raise InvalidRequestError(f"invalid {names}", errors=errors) from None
        except HutchSDKError:
            raise
        except ValueError as e:
            raise InvalidRequestError(str(e)) from None

    return wrapper


def choice(kind: type[E], value: E | str, name: str) -> E:
    """`value` as a member of `kind`, or InvalidRequestError listing the allowed values."""
    try:
        return kind(value)
    except ValueError:
        allowed = [m.value for m in kind]
        must = f"must be one of {', '.join(allowed)}"
        raise InvalidRequestError(
            f"{name} {must} (got {value!r})",
            errors=[{"loc": [name], "field": name, "msg": must, "allowed": allowed}],
        ) from None


def sandbox_file(path: str, user: ExecUser | str = ExecUser.user) -> str:
    """A sandbox path; a relative one is taken from the user's home directory (as in e2b)."""
    if path.startswith("/"):
        return path
    if not path.strip():
        raise ValueError("path is empty: give a file or directory in the sandbox")
    home = "/root" if choice(ExecUser, user, "user") is ExecUser.root else SANDBOX_USER_HOME
    return posixpath.join(home, path)


def _json(resp: httpx.Response) -> Any:
    return resp.json()


def _model(tp: Any) -> Any:
    def parse(resp: httpx.Response) -> Any:
        return tp.model_validate_json(resp.content)

    return parse


def sbx_path(sandbox_id: str, sub: str = "") -> str:
    """API path of a sandbox (or one of its sub-routes)."""
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}{sub}"


def idempotency_headers(key: str | None = None) -> dict[str, str]:
    """A fresh Idempotency-Key (uuid4) unless the caller chose one."""
    return {"Idempotency-Key": key or str(uuid.uuid4())}


# --- sandboxes ---


@checked
def create_sandbox(
    *,
    template: str,
    timeout: int,
    vcpu: int,
    memory_mb: int,
    disk_mb: int,
    isolation: IsolationClass | str,
    envs: dict[str, str] | None,
    metadata: dict[str, str] | None,
    idempotency_key: str | None = None,
    secrets: list[str] | dict[str, str] | None = None,
    network: NetworkPolicy | dict[str, Any] | None = None,
) -> Call[SandboxInfo]:
    """POST /v1/sandboxes; validated locally first so mistakes fail before any network."""
    spec = SandboxSpec(
        template=template,
        isolation=choice(IsolationClass, isolation, "isolation"),
        vcpu=vcpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        timeout_s=timeout,
        env=dict(envs or {}),
        network=NetworkPolicy.model_validate(network) if network is not None else None,
    )
    drop = {"network"} if spec.network is None else set()  # older servers know no such field
    body = {**spec.model_dump(mode="json", exclude=drop), "metadata": dict(metadata or {})}
    if secrets:
        body["secrets"] = check_secret_refs(
            list(secrets) if isinstance(secrets, list | tuple) else dict(secrets)
        )
    return Call(
        "POST",
        "/v1/sandboxes",
        _model(SandboxInfo),
        json=body,
        headers=idempotency_headers(idempotency_key),
        # The server may wait this long for a sandbox to start (a cold template, a busy host):
        # a client giving up sooner would leave a sandbox it does not know about.
        min_timeout=CREATE_WAIT_S,
    )


def get_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    """GET /v1/sandboxes/{id}."""
    return Call("GET", sbx_path(sandbox_id), _model(SandboxInfo))


@checked
def list_sandboxes(
    *,
    state: SandboxState | str | None = None,
    metadata: dict[str, str] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[SandboxPage]:
    """GET /v1/sandboxes, one page."""
    params: list[tuple[str, str]] = []
    if state is not None:
        params.append(("state", choice(SandboxState, state, "state").value))
    for k, v in (metadata or {}).items():
        params.append((f"metadata.{k}", v))
    if limit is not None:
        params.append(("limit", str(limit)))
    if cursor:
        params.append(("cursor", cursor))
    return Call("GET", "/v1/sandboxes", _model(SandboxPage), params=tuple(params))


def kill_sandbox(sandbox_id: str) -> Call[None]:
    """DELETE /v1/sandboxes/{id}."""
    return no_content("DELETE", sbx_path(sandbox_id))


@checked
def set_timeout(sandbox_id: str, timeout: int) -> Call[SandboxInfo]:
    """POST /v1/sandboxes/{id}/timeout."""
    body = SetTimeout(timeout_s=timeout).model_dump()
    return Call("POST", sbx_path(sandbox_id, "/timeout"), _model(SandboxInfo), json=body)


def sandbox_stats(sandbox_id: str) -> Call[SandboxStats]:
    """GET /v1/sandboxes/{id}/stats."""
    return Call("GET", sbx_path(sandbox_id, "/stats"), _model(SandboxStats))


def get_network(sandbox_id: str) -> Call[NetworkPolicy]:
    """GET /v1/sandboxes/{id}/network."""
    return Call("GET", sbx_path(sandbox_id, "/network"), _model(NetworkPolicy))


def set_network(sandbox_id: str, policy: NetworkPolicy) -> Call[SandboxInfo]:
    """PUT /v1/sandboxes/{id}/network."""
    return Call(
        "PUT", sbx_path(sandbox_id, "/network"), _model(SandboxInfo), json=policy.model_dump()
    )


@checked
def network_policy(
    *,
    allow_domains: list[str] | None = None,
    allow_cidrs: list[str] | None = None,
    deny_domains: list[str] | None = None,
    deny_cidrs: list[str] | None = None,
    allow_public: bool = False,
) -> NetworkPolicy:
    """A policy from keyword arguments, validated before anything is sent."""
    return NetworkPolicy(
        allow_domains=list(allow_domains or []),
        allow_cidrs=list(allow_cidrs or []),
        deny_domains=list(deny_domains or []),
        deny_cidrs=list(deny_cidrs or []),
        allow_public=allow_public,
    )


# --- ports ---


@checked
def port_info(sandbox_id: str, port: int) -> Call[PortInfo]:
    """GET /v1/sandboxes/{id}/ports/{port}: access setting and URLs."""
    return Call("GET", sbx_path(sandbox_id, f"/ports/{int(port)}"), _model(PortInfo))


@checked
def set_port(sandbox_id: str, port: int, public: bool) -> Call[PortInfo]:
    """PUT /v1/sandboxes/{id}/ports/{port}."""
    body = PortUpdate(public=public).model_dump()
    return Call("PUT", sbx_path(sandbox_id, f"/ports/{int(port)}"), _model(PortInfo), json=body)


@checked
def port_token(sandbox_id: str, port: int, expires_in: int) -> Call[PortToken]:
    """POST /v1/sandboxes/{id}/ports/{port}/token (validated locally first)."""
    body = PortTokenRequest(expires_in=expires_in).model_dump()
    path = sbx_path(sandbox_id, f"/ports/{int(port)}/token")
    return Call("POST", path, _model(PortToken), json=body)


def port_url(info: PortInfo | PortToken, path: str, routing: str) -> str:
    """The URL of `path` on a port: host-routed (`routing="host"`) or path-routed, with the
    token of a PortToken as `hutch_token`."""
    if routing not in ("host", "path"):
        raise ValueError(f"routing must be 'host' or 'path', not {routing!r}")
    base = info.url if routing == "host" else info.path_url
    base = base.split("?", 1)[0]
    url = base + path.lstrip("/")
    if isinstance(info, PortToken):
        url += ("&" if "?" in url else "?") + f"hutch_token={info.token}"
    return url


# --- commands ---


@checked
def exec_request(
    cmd: str | list[str],
    *,
    envs: dict[str, str] | None = None,
    cwd: str | None = None,
    user: ExecUser | str = ExecUser.user,
    timeout: float | None = 60,
    stdin: str | None = None,
    background: bool = False,
    pty: Any = None,
    tag: str | None = None,
) -> ExecRequest:
    """Validate a command locally; `timeout` 0 or None means no limit (as in e2b)."""
    return ExecRequest(
        cmd=cmd,
        env=dict(envs or {}),
        cwd=cwd,
        user=choice(ExecUser, user, "user"),
        stdin=stdin,
        timeout_s=timeout or None,
        background=background,
        pty=pty,
        tag=tag,
    )


def exec_call(sandbox_id: str, req: ExecRequest, request_timeout: float | None) -> Call[Any]:
    """POST /exec: ExecResult when foreground, ProcessInfo when background. Not replayed: a
    command must not run twice because a connection dropped."""
    if req.background:
        return Call(
            "POST",
            sbx_path(sandbox_id, "/exec"),
            _model(ProcessInfo),
            json=req.model_dump(mode="json"),
            idempotent=False,
        )
    timeout: float | None = None
    if req.timeout_s is not None and request_timeout is not None:
        timeout = req.timeout_s + max(request_timeout, EXEC_GRACE_S)
    return Call(
        "POST",
        sbx_path(sandbox_id, "/exec"),
        _model(ExecResult),
        json=req.model_dump(mode="json"),
        idempotent=False,
        timeout=timeout,
    )


def list_processes(sandbox_id: str) -> Call[list[ProcessInfo]]:
    """GET /processes."""
    return Call(
        "GET",
        sbx_path(sandbox_id, "/processes"),
        lambda r: _processes.validate_json(r.content),
    )


@checked
def signal_process(sandbox_id: str, pid: int, signal: int = 9) -> Call[None]:
    """POST /processes/{pid}/signal (SIGKILL by default)."""
    return no_content(
        "POST",
        sbx_path(sandbox_id, f"/processes/{pid}/signal"),
        json=SignalRequest(signal=signal).model_dump(),
    )


@checked
def send_stdin(sandbox_id: str, pid: int, data: str | bytes, eof: bool = False) -> Call[None]:
    """POST /processes/{pid}/stdin. Not replayed: input must not arrive twice."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise InvalidRequestError(
            "stdin sent over HTTP must be UTF-8 text; send binary input over the command's "
            "stream (a handle from commands.connect(pid))"
        ) from None
    return no_content(
        "POST",
        sbx_path(sandbox_id, f"/processes/{pid}/stdin"),
        json=StdinRequest(data=text, eof=eof).model_dump(),
        idempotent=False,
    )


def wait_process(sandbox_id: str, pid: int) -> Call[ExecResult]:
    """POST /processes/{pid}/wait; blocks until the process ends."""
    return Call(
        "POST", sbx_path(sandbox_id, f"/processes/{pid}/wait"), _model(ExecResult), timeout=None
    )


# --- files ---


def _path(path: str) -> tuple[tuple[str, str], ...]:
    return (("path", sandbox_file(path)),)


@checked
def read_file(sandbox_id: str, path: str) -> Call[bytes]:
    """GET /files (downloads may be long: bounded by the idle read timeout, not a total)."""
    return Call("GET", sbx_path(sandbox_id, "/files"), lambda r: r.content, params=_path(path))


@checked
def write_file(sandbox_id: str, path: str, user: ExecUser | str = ExecUser.user) -> Call[WriteInfo]:
    """PUT /files with a raw (possibly streamed) body. A re-upload of the same bytes gives the
    same result, so buffered bodies may be replayed; streamed ones never are."""
    return Call(
        "PUT",
        sbx_path(sandbox_id, "/files"),
        _model(WriteInfo),
        params=(("path", sandbox_file(path, user)), ("user", choice(ExecUser, user, "user").value)),
        headers={"Content-Type": "application/octet-stream"},
        timeout=None,
    )


@checked
def list_dir(sandbox_id: str, path: str, depth: int = 1) -> Call[list[FileInfo]]:
    """GET /files/list."""
    if depth < 1:
        raise ValueError("depth must be 1 or more")
    return Call(
        "GET",
        sbx_path(sandbox_id, "/files/list"),
        lambda r: _file_infos.validate_json(r.content),
        params=(("path", sandbox_file(path)), ("depth", str(depth))),
    )


@checked
def stat(sandbox_id: str, path: str) -> Call[FileInfo]:
    """GET /files/stat."""
    return Call("GET", sbx_path(sandbox_id, "/files/stat"), _model(FileInfo), params=_path(path))


@checked
def exists(sandbox_id: str, path: str) -> Call[bool]:
    """GET /files/exists."""
    return Call(
        "GET",
        sbx_path(sandbox_id, "/files/exists"),
        lambda r: Exists.model_validate_json(r.content).exists,
        params=_path(path),
    )


@checked
def make_dir(sandbox_id: str, path: str, user: ExecUser | str = ExecUser.user) -> Call[FileInfo]:
    """POST /files/mkdir (mkdir -p)."""
    body = MakeDir(path=sandbox_file(path, user), user=choice(ExecUser, user, "user")).model_dump(
        mode="json"
    )
    return Call("POST", sbx_path(sandbox_id, "/files/mkdir"), _model(FileInfo), json=body)


@checked
def rename(sandbox_id: str, src: str, dst: str, overwrite: bool = False) -> Call[FileInfo]:
    """POST /files/rename. Not replayed: a second attempt would find `src` gone."""
    body = Rename(src=sandbox_file(src), dst=sandbox_file(dst), overwrite=overwrite).model_dump()
    return Call(
        "POST",
        sbx_path(sandbox_id, "/files/rename"),
        _model(FileInfo),
        json=body,
        idempotent=False,
    )


@checked
def remove(sandbox_id: str, path: str, recursive: bool = True) -> Call[None]:
    """DELETE /files."""
    params = (("path", sandbox_file(path)), ("recursive", "true" if recursive else "false"))
    return no_content("DELETE", sbx_path(sandbox_id, "/files"), params=params)


# --- accounts, keys, templates (returned as plain JSON; shapes belong to the server) ---


def get_json(path: str, params: tuple[tuple[str, str], ...] = ()) -> Call[Any]:
    """GET any JSON resource."""
    return Call("GET", path, _json, params=params)


def create_json(path: str, body: dict[str, Any], idempotency_key: str | None = None) -> Call[Any]:
    """POST a create with an Idempotency-Key, so a retried create makes one resource."""
    return Call("POST", path, _json, json=body, headers=idempotency_headers(idempotency_key))


def post_json(path: str, body: dict[str, Any]) -> Call[Any]:
    """POST a non-create action (not replayed)."""
    return Call("POST", path, _json, json=body, idempotent=False)


def get_text(path: str, params: tuple[tuple[str, str], ...] = ()) -> Call[str]:
    """GET a text document (exports)."""
    return Call("GET", path, lambda r: r.text, params=params, timeout=None)


def post_no_content(path: str, body: dict[str, Any]) -> Call[None]:
    """POST an action answered with 204."""
    return no_content("POST", path, json=body)


def patch_json(path: str, body: dict[str, Any]) -> Call[Any]:
    """PATCH a resource (the same body twice gives the same result)."""
    return Call("PATCH", path, _json, json=body)


def delete(path: str) -> Call[None]:
    """DELETE a resource."""
    return no_content("DELETE", path)
