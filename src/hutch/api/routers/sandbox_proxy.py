"""Commands, processes, files and the exec stream: checked here, then passed 1:1 to the runner.

File bodies are streamed in both directions, never buffered.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request, Response, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from hutch.api.deps import (
    EXEC_BODY_MAX,
    Actor,
    Services,
    Svc,
    key_prefix,
    presented_key,
    resolve_key,
)
from hutch.api.errors import PROBLEM_RESPONSES
from hutch.api.stream_audit import StreamAudit
from hutch.models.api import Scope
from hutch.models.common import ErrorCode, ExecUser, HutchError
from hutch.models.exec import (
    ErrorFrame,
    ExecRequest,
    ExecResult,
    ProcessInfo,
    SignalRequest,
    StdinRequest,
)
from hutch.models.files import Exists, FileInfo, MakeDir, Rename, WriteInfo, check_sandbox_path
from hutch.services.permissions import Principal
from hutch.services.runner_port import RunnerPort, RunnerSocket
from hutch.services.suspensions import refuse_if_suspended

# No router-wide body limit: uploads stream without one (the runner enforces disk quotas).
router = APIRouter(
    prefix="/v1/sandboxes/{sandbox_id}", tags=["sandbox content"], responses=PROBLEM_RESPONSES
)
SandboxId = Annotated[str, Path(max_length=64)]
Pid = Annotated[int, Path(ge=1, le=2**31)]


async def _check(svc: Svc, actor: Actor, sandbox_id: str, scope: Scope) -> RunnerPort:
    actor.require(scope)
    if scope is Scope.sandboxes_write:
        refuse_if_suspended(actor.suspended)
    if not svc.sandboxes.seen_running(actor, sandbox_id):
        await run_in_threadpool(svc.sandboxes.running, actor, sandbox_id, scope)
    return svc.sandboxes.require_runner()


async def check_writer(svc: Services, actor: Principal, sandbox_id: str) -> RunnerPort:
    """The runner, once the caller may change this running sandbox (raises otherwise)."""
    return await _check(svc, actor, sandbox_id, Scope.sandboxes_write)


async def reader(sandbox_id: SandboxId, actor: Actor, svc: Svc) -> RunnerPort:
    """The runner, once the caller may read this running sandbox."""
    return await _check(svc, actor, sandbox_id, Scope.sandboxes_read)


async def writer(sandbox_id: SandboxId, actor: Actor, svc: Svc) -> RunnerPort:
    """The runner, once the caller may change this running sandbox."""
    return await _check(svc, actor, sandbox_id, Scope.sandboxes_write)


Reader = Annotated[RunnerPort, Depends(reader)]
Writer = Annotated[RunnerPort, Depends(writer)]


async def sandbox_path(
    path: Annotated[str, Query(min_length=1, max_length=4096, description="Absolute path")],
) -> str:
    """A `path` query parameter: absolute, no NUL."""
    try:
        return check_sandbox_path(path)
    except ValueError as e:
        raise HutchError(
            ErrorCode.invalid_request,
            str(e),
            errors=[{"loc": ["query", "path"], "field": "path", "msg": str(e)}],
        ) from None


SPath = Annotated[str, Depends(sandbox_path)]


# --- commands ---


@router.post(
    "/exec",
    max_body_size=EXEC_BODY_MAX,
    response_model=ExecResult,
    responses={201: {"model": ProcessInfo, "description": "Started in the background"}},
)
async def exec_command(
    sandbox_id: SandboxId, body: ExecRequest, runner: Writer, actor: Actor, svc: Svc
) -> Response:
    """Run a command to completion (200 ExecResult) or in the background (201 ProcessInfo)."""
    audited = actor.audit_exec
    started = svc.clock.now()
    try:
        result = await runner.exec(sandbox_id, body)
    except HutchError:
        if audited:  # refused or failed (e.g. no such program): recorded without an exit code
            await _audit_exec(
                svc, actor, sandbox_id, body, "exec", started_at=started, ended_at=svc.clock.now()
            )
        raise
    if audited:
        if isinstance(result, ExecResult):
            await _audit_exec(
                svc,
                actor,
                sandbox_id,
                body,
                "exec",
                pid=result.pid,
                exit_code=result.exit_code,
                started_at=result.started_at,
                ended_at=result.ended_at,
            )
        else:
            await _audit_exec(
                svc, actor, sandbox_id, body, "background", pid=result.pid, started_at=started
            )
    status = 201 if isinstance(result, ProcessInfo) else 200
    return Response(result.model_dump_json(), status_code=status, media_type="application/json")


async def _audit_exec(
    svc: Svc,
    actor: Actor,
    sandbox_id: str,
    body: ExecRequest,
    kind: str,
    **fields: Any,
) -> str:
    # Only argv[0] leaves this function; arguments, env, stdin and output never do.
    argv0 = body.argv()[0]
    return await run_in_threadpool(
        lambda: svc.exec_audit.start(
            project_id=actor.project_id,
            mode=actor.mode.value,
            sandbox_id=sandbox_id,
            argv0=argv0,
            kind=kind,
            **fields,
        )
    )


@router.get("/processes", response_model=list[ProcessInfo])
async def list_processes(sandbox_id: SandboxId, runner: Reader) -> list[ProcessInfo]:
    """Processes started through exec."""
    return await runner.processes(sandbox_id)


@router.post("/processes/{pid}/signal", status_code=204, max_body_size=EXEC_BODY_MAX)
async def signal_process(
    sandbox_id: SandboxId, pid: Pid, body: SignalRequest, runner: Writer
) -> Response:
    """Send a signal."""
    await runner.signal(sandbox_id, pid, body)
    return Response(status_code=204)


@router.post("/processes/{pid}/stdin", status_code=204, max_body_size=EXEC_BODY_MAX)
async def write_stdin(
    sandbox_id: SandboxId, pid: Pid, body: StdinRequest, runner: Writer
) -> Response:
    """Write to a background process's stdin."""
    await runner.stdin(sandbox_id, pid, body)
    return Response(status_code=204)


@router.post("/processes/{pid}/wait", response_model=ExecResult)
async def wait_process(
    sandbox_id: SandboxId, pid: Pid, runner: Writer, actor: Actor, svc: Svc
) -> ExecResult:
    """Block until the process exits."""
    result = await runner.wait(sandbox_id, pid)
    if actor.audit_exec:
        await run_in_threadpool(
            lambda: svc.exec_audit.finish(
                sandbox_id=sandbox_id, pid=pid, exit_code=result.exit_code, ended_at=result.ended_at
            )
        )
    return result


# --- files ---


@router.get(
    "/files",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "File content"}},
)
async def download(sandbox_id: SandboxId, path: SPath, runner: Reader) -> StreamingResponse:
    """Download a file (streamed)."""
    chunks = runner.read_file(sandbox_id, path)
    # The first chunk is awaited here so a missing file is a problem+json 404, not a broken body.
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    return StreamingResponse(body(), media_type="application/octet-stream")


@router.put(
    "/files",
    response_model=WriteInfo,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def upload(
    sandbox_id: SandboxId,
    path: SPath,
    request: Request,
    runner: Writer,
    user: Annotated[ExecUser, Query()] = ExecUser.user,
) -> WriteInfo:
    """Upload a file from the raw request body (streamed)."""
    return await runner.write_file(sandbox_id, path, request.stream(), user)


@router.get("/files/list", response_model=list[FileInfo])
async def list_files(
    sandbox_id: SandboxId,
    path: SPath,
    runner: Reader,
    depth: Annotated[int, Query(ge=1, le=16)] = 1,
) -> list[FileInfo]:
    """Directory listing."""
    return await runner.list_files(sandbox_id, path, depth)


@router.get("/files/stat", response_model=FileInfo)
async def stat(sandbox_id: SandboxId, path: SPath, runner: Reader) -> FileInfo:
    """One entry."""
    return await runner.stat(sandbox_id, path)


@router.get("/files/exists", response_model=Exists)
async def exists(sandbox_id: SandboxId, path: SPath, runner: Reader) -> Exists:
    """Whether a path exists."""
    return await runner.exists(sandbox_id, path)


@router.post("/files/mkdir", response_model=FileInfo, max_body_size=EXEC_BODY_MAX)
async def mkdir(sandbox_id: SandboxId, body: MakeDir, runner: Writer) -> FileInfo:
    """mkdir -p."""
    return await runner.mkdir(sandbox_id, body)


@router.post("/files/rename", response_model=FileInfo, max_body_size=EXEC_BODY_MAX)
async def rename(sandbox_id: SandboxId, body: Rename, runner: Writer) -> FileInfo:
    """Move a file or directory."""
    return await runner.rename(sandbox_id, body)


@router.delete("/files", status_code=204)
async def remove(
    sandbox_id: SandboxId,
    path: SPath,
    runner: Writer,
    recursive: Annotated[bool, Query()] = False,
) -> Response:
    """Delete a file (or a directory with recursive=true)."""
    await runner.remove(sandbox_id, path, recursive)
    return Response(status_code=204)


# --- exec stream (WebSocket) ---

# Close codes for refusals before proxying: 4000 + the HTTP status the error would have had.
WS_REFUSED_BASE = 4000


async def _refuse(ws: WebSocket, err: HutchError) -> None:
    await ws.accept()
    await ws.send_text(ErrorFrame(code=err.code.value, detail=err.detail).model_dump_json())
    await ws.close(code=WS_REFUSED_BASE + err.status % 1000)


async def _pump_client(ws: WebSocket, upstream: RunnerSocket, audit: StreamAudit | None) -> None:
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                if audit is not None:
                    await audit.client_text(msg["text"])
                await upstream.send(msg["text"])
            elif msg.get("bytes") is not None:
                await upstream.send(msg["bytes"])
    except Exception:  # either side went away; the other pump is cancelled by the caller
        return


async def _pump_runner(ws: WebSocket, upstream: RunnerSocket, audit: StreamAudit | None) -> None:
    try:
        while True:
            data = await upstream.recv()  # raises once the runner closed (after exit/error)
            if isinstance(data, str):
                if audit is not None:
                    await audit.runner_text(data)
                await ws.send_text(data)
            else:
                await ws.send_bytes(data)
    except Exception:
        return


@router.websocket("/exec/stream")
async def exec_stream(ws: WebSocket, sandbox_id: SandboxId, svc: Svc) -> None:
    """Interactive command / PTY: frames pass unchanged between the client and the runner."""
    async with AsyncExitStack() as stack:
        try:
            key = presented_key(ws)
            actor = await resolve_key(svc, key)
            ws.state.key_id = actor.key_id
            ws.state.key_prefix = key_prefix(key)
            await run_in_threadpool(svc.sandboxes.running, actor, sandbox_id, Scope.sandboxes_write)
            runner = svc.sandboxes.require_runner()
            audit = None
            if actor.audit_exec:
                audit = StreamAudit(svc, actor, sandbox_id)
            path = f"/v1/sandboxes/{sandbox_id}/exec/stream"
            upstream = await stack.enter_async_context(runner.websocket(path))
        except HutchError as e:
            await _refuse(ws, e)
            return
        except OSError:
            await _refuse(ws, HutchError(ErrorCode.runner_unavailable, "the runner did not answer"))
            return
        await ws.accept()
        async with anyio.create_task_group() as tg:

            async def pump(
                fn: Callable[[WebSocket, RunnerSocket, StreamAudit | None], Awaitable[None]],
            ) -> None:
                await fn(ws, upstream, audit)
                tg.cancel_scope.cancel()

            tg.start_soon(pump, _pump_client)
            tg.start_soon(pump, _pump_runner)
        if audit is not None:
            with anyio.CancelScope(shield=True):
                await audit.close()
    with contextlib.suppress(RuntimeError):  # the client may have closed first
        await ws.close()
