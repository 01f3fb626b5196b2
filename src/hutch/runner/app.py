"""The runner protocol: HTTP + WebSocket (over a unix socket), documented by its OpenAPI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Path, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

from hutch import __version__
from hutch.models import (
    ErrorCode,
    ExecRequest,
    ExecResult,
    ExecUser,
    FileInfo,
    HutchError,
    IsolationInfo,
    MakeDir,
    NetworkPolicy,
    ProcessInfo,
    PtySize,
    Rename,
    RunnerCreate,
    RunnerInfo,
    SandboxInfo,
    SandboxStats,
    SetTimeout,
    SignalRequest,
    StdinRequest,
    Stream,
    TemplateInfo,
    WriteInfo,
)
from hutch.models.exec import (
    AttachFrame,
    ClientFrame,
    CloseStdinFrame,
    ErrorFrame,
    ExitFrame,
    ResizeFrame,
    SignalFrame,
    StartedFrame,
    StartFrame,
    exit_code_for,
)
from hutch.models.files import Exists
from hutch.runner.files import SandboxFiles
from hutch.runner.manager import SandboxManager
from hutch.runner.processes import Process, ProcessTable
from hutch.runner.tunnel import Tunnels
from hutch.runtime.base import ExitStatus
from hutch.runtime.namespace.cgroups import favoring_dynamic_modifications

PROBLEM = "application/problem+json"
PORTS_DOC = (
    "`WS /v1/sandboxes/{sid}/ports/{port}/connect` (a WebSocket, so not listed under paths): "
    "a byte tunnel to TCP `port` on the sandbox's own loopback (127.0.0.1, else ::1), made "
    "from the runner without giving the sandbox any network. The first frame is text "
    '`{"type": "connected"}`, or an error frame `{"type": "error", "code", "detail"}` followed '
    "by close code 4000 + HTTP status (4404, 4409, 4422 isolation class without ports, 4502 "
    "nothing listening). Then binary frames carry the bytes both ways, in order. No half-close: "
    "the sandbox side closing ends the WebSocket (1000), the client closing ends the TCP "
    "connection, the sandbox stopping ends it with 1001."
)
_frames: TypeAdapter[Any] = TypeAdapter(ClientFrame)
SandboxPath = Annotated[str, Query(min_length=1, max_length=4096, description="Absolute path")]


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status, media_type="application/json")


def problem_response(err: HutchError, instance: str | None = None) -> JSONResponse:
    """problem+json for a HutchError."""
    return JSONResponse(
        err.problem(instance).model_dump(exclude_none=True),
        status_code=err.status,
        media_type=PROBLEM,
        headers=err.headers,
    )


def validation_problem(exc: RequestValidationError | ValidationError) -> HutchError:
    """A 422 that names each bad field and what is allowed."""
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        | ({"allowed": e["ctx"]} if e.get("ctx") else {})
        for e in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return HutchError(ErrorCode.invalid_request, f"invalid request: {summary}", errors=errors)


def _watch_children_with_pidfds() -> None:
    """Every create starts the sandbox launcher as a subprocess. Python before 3.12 waits for
    each child on a thread of its own; a pidfd on the event loop does it without one (3.12
    does this by default)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:  # the kernel (5.3+) and any seccomp profile must allow it too
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


def create_app(manager: SandboxManager, *, own_process: bool = False) -> FastAPI:
    """The runner's ASGI app; `manager` is started and stopped with it. `own_process`: the
    app's event loop is the process's only one (the child watcher is process-wide)."""

    tunnels = Tunnels()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if own_process:
            _watch_children_with_pidfds()
        await manager.start()
        watcher = asyncio.create_task(tunnels.watch(manager))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await manager.stop()

    app = FastAPI(
        title="Hutch runner protocol",
        openapi_tags=[{"name": "ports", "description": PORTS_DOC}],
        version=__version__,
        lifespan=lifespan,
        description="The privileged runner's API: sandboxes, exec, processes, files, events.",
    )

    @app.exception_handler(HutchError)
    async def _hutch_error(request: Request, exc: HutchError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc), request.url.path)

    def table(sid: str) -> ProcessTable:
        sb = manager.running(sid)
        assert sb.processes is not None
        return sb.processes

    def files(sid: str) -> SandboxFiles:
        sb = manager.running(sid)
        rt = manager.runtimes[sb.record.isolation]
        return SandboxFiles(rt.root_path(sb.plan), sb.record.uid_base)

    # ----------------------------------------------------------------- runner & sandboxes

    @app.get("/v1/health", response_model=RunnerInfo)
    async def health() -> RunnerInfo:
        iso = []
        for cls, rt in manager.runtimes.items():
            h = rt.health()
            iso.append(IsolationInfo(isolation=cls, available=h.available, reason=h.reason))
        ns = manager.runtimes.get(next(iter(manager.runtimes)))
        cg = getattr(ns, "cgroups", None)
        return RunnerInfo(
            version=__version__,
            cgroup_version=cg.version if cg is not None else 0,
            cgroup_favor_dynmods=favoring_dynamic_modifications(),
            isolation=iso,
            templates=manager.templates.list(),
            sandboxes=len(manager.sandboxes),
        )

    @app.get("/v1/templates", response_model=list[TemplateInfo])
    async def templates() -> list[TemplateInfo]:
        return manager.templates.list()

    # The hot endpoints answer with the model's own JSON: FastAPI would validate the returned
    # model again against `response_model` (kept for the schema) before serialising it.

    @app.post("/v1/sandboxes", status_code=201, response_model=SandboxInfo)
    async def create(req: RunnerCreate) -> Response:
        return _json(await manager.create(req), 201)

    @app.get("/v1/sandboxes", response_model=list[SandboxInfo])
    async def list_sandboxes() -> list[SandboxInfo]:
        return manager.list()

    @app.get("/v1/sandboxes/{sid}", response_model=SandboxInfo)
    async def get(sid: str) -> Response:
        return _json(manager.get(sid).record.info())

    @app.delete("/v1/sandboxes/{sid}", status_code=204)
    async def kill(sid: str) -> Response:
        await manager.kill(sid)
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{sid}/timeout", response_model=SandboxInfo)
    async def set_timeout(sid: str, body: SetTimeout) -> SandboxInfo:
        return await manager.set_timeout(sid, body.timeout_s)

    @app.get("/v1/sandboxes/{sid}/stats", response_model=SandboxStats)
    async def stats(sid: str) -> SandboxStats:
        return await manager.stats(sid)

    @app.put("/v1/sandboxes/{sid}/network", response_model=SandboxInfo)
    async def set_network(sid: str, body: NetworkPolicy) -> SandboxInfo:
        return await manager.set_network(sid, body)

    # ----------------------------------------------------------------- exec & processes

    @app.post("/v1/sandboxes/{sid}/exec", response_model=ExecResult | ProcessInfo)
    async def exec_(sid: str, req: ExecRequest) -> Response:
        t = table(sid)
        if req.background:
            proc = await t.start(req, keep_stdin=True)
            return _json(proc.info(), 201)
        if req.pty is not None:
            raise HutchError(
                ErrorCode.invalid_request, "a PTY needs the streaming endpoint (exec/stream)"
            )
        return _json(await t.run(req))

    @app.get("/v1/sandboxes/{sid}/processes", response_model=list[ProcessInfo])
    async def processes(sid: str) -> list[ProcessInfo]:
        return [p.info() for p in table(sid).procs.values()]

    @app.post("/v1/sandboxes/{sid}/processes/{pid}/signal", status_code=204)
    async def signal(sid: str, pid: int, body: SignalRequest) -> Response:
        t = table(sid)
        proc = t.get(pid)
        if proc.status is None:
            await t.runtime.signal(t.plan, pid, body.signal)
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{sid}/processes/{pid}/stdin", status_code=204)
    async def stdin(sid: str, pid: int, body: StdinRequest) -> Response:
        t = table(sid)
        proc = t.get(pid)
        if body.data:
            await t.write_stdin(proc, body.data.encode())
        if body.eof:
            t.close_stdin(proc)
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{sid}/processes/{pid}/wait", response_model=ExecResult)
    async def wait(sid: str, pid: int) -> ExecResult:
        t = table(sid)
        return await t.wait_result(t.get(pid))

    @app.websocket("/v1/sandboxes/{sid}/exec/stream")
    async def exec_stream(ws: WebSocket, sid: str) -> None:
        await ws.accept()
        try:
            first = _frames.validate_python(await ws.receive_json())
            t = table(sid)
            if isinstance(first, StartFrame):
                proc = await t.start(first.request, keep_stdin=True)
            elif isinstance(first, AttachFrame):
                proc = t.get(first.pid)
            else:
                raise HutchError(
                    ErrorCode.invalid_request, "the first frame must be start or attach"
                )
        except HutchError as e:
            await _close_with(ws, ErrorFrame(code=e.code.value, detail=e.detail))
            return
        except (ValidationError, ValueError) as e:
            err = validation_problem(e) if isinstance(e, ValidationError) else None
            detail = err.detail if err else str(e)
            await _close_with(ws, ErrorFrame(code=ErrorCode.invalid_request.value, detail=detail))
            return
        except WebSocketDisconnect:
            return
        queue = proc.subscribe(replay=True)
        await ws.send_json(StartedFrame(pid=proc.pid).model_dump())
        reader = asyncio.create_task(_client_frames(ws, t, proc))
        try:
            while True:
                item = await _next_or_gone(queue, reader)
                if item is None:  # the client went away; the process keeps running
                    return
                if isinstance(item, ExitStatus):
                    await _close_with(ws, _exit_frame(proc, item))
                    return
                stream, data = item
                await ws.send_bytes(bytes([stream]) + data)
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            proc.subscribers.discard(queue)
            reader.cancel()

    # ----------------------------------------------------------------- files

    @app.get("/v1/sandboxes/{sid}/files")
    async def download(sid: str, path: SandboxPath) -> StreamingResponse:
        f = files(sid)
        fd, size = f.open_read(path)  # errors surface before the response starts
        return StreamingResponse(
            f.read_chunks(fd),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    @app.put("/v1/sandboxes/{sid}/files", response_model=WriteInfo)
    async def upload(
        sid: str, path: SandboxPath, request: Request, user: ExecUser = ExecUser.user
    ) -> WriteInfo:
        f = files(sid)
        size = await f.write_stream(path, request.stream(), user=user.value)
        return WriteInfo(path=path, size=size)

    @app.get("/v1/sandboxes/{sid}/files/list", response_model=list[FileInfo])
    async def list_dir(
        sid: str, path: SandboxPath, depth: Annotated[int, Query(ge=1, le=10)] = 1
    ) -> list[FileInfo]:
        return await asyncio.to_thread(files(sid).list, path, depth)

    @app.get("/v1/sandboxes/{sid}/files/stat", response_model=FileInfo)
    async def stat(sid: str, path: SandboxPath) -> FileInfo:
        return await asyncio.to_thread(files(sid).stat, path)

    @app.get("/v1/sandboxes/{sid}/files/exists", response_model=Exists)
    async def exists(sid: str, path: SandboxPath) -> Exists:
        return Exists(path=path, exists=await asyncio.to_thread(files(sid).exists, path))

    @app.post("/v1/sandboxes/{sid}/files/mkdir", response_model=FileInfo)
    async def mkdir(sid: str, body: MakeDir) -> FileInfo:
        return await asyncio.to_thread(files(sid).make_dir, body.path, body.user.value)

    @app.post("/v1/sandboxes/{sid}/files/rename", response_model=FileInfo)
    async def rename(sid: str, body: Rename) -> FileInfo:
        return await asyncio.to_thread(files(sid).rename, body.src, body.dst, body.overwrite)

    @app.delete("/v1/sandboxes/{sid}/files", status_code=204)
    async def remove(sid: str, path: SandboxPath, recursive: bool = False) -> Response:
        await asyncio.to_thread(files(sid).remove, path, recursive)
        return Response(status_code=204)

    # ----------------------------------------------------------------- ports

    @app.websocket("/v1/sandboxes/{sid}/ports/{port}/connect")
    async def port_connect(
        ws: WebSocket, sid: str, port: Annotated[int, Path(ge=1, le=65535)]
    ) -> None:
        async def connect() -> socket.socket:
            sb = manager.running(sid)
            return await manager.runtimes[sb.record.isolation].connect_port(sb.plan, port)

        await tunnels.serve(ws, sid, port, connect)

    app.state.tunnels = tunnels

    # ----------------------------------------------------------------- events

    @app.websocket("/v1/events")
    async def events(ws: WebSocket) -> None:
        await ws.accept()
        q = manager.subscribe()
        gone = asyncio.create_task(_until_disconnect(ws))
        try:
            while (ev := await _next_or_gone(q, gone)) is not None:
                await ws.send_text(ev.model_dump_json())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            gone.cancel()
            manager.unsubscribe(q)

    return app


def _exit_frame(proc: Process, st: ExitStatus) -> ExitFrame:
    return ExitFrame(
        exit_code=exit_code_for(st.code, st.signal), signal=st.signal, timed_out=proc.timed_out
    )


T = TypeVar("T")


async def _next_or_gone(queue: asyncio.Queue[T], client: asyncio.Task[None]) -> T | None:
    """The next queued item, or None once the client side has ended (disconnect or server
    shutdown), so a handler never outlives its connection waiting on a quiet queue."""
    get = asyncio.ensure_future(queue.get())
    done, _ = await asyncio.wait({get, client}, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    return None


async def _until_disconnect(ws: WebSocket) -> None:
    """Return when the client disconnects (anything it sends is ignored)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


async def _close_with(ws: WebSocket, frame: ExitFrame | ErrorFrame) -> None:
    with contextlib.suppress(Exception):
        await ws.send_json(frame.model_dump())
        await ws.close()


async def _client_frames(ws: WebSocket, t: ProcessTable, proc: Process) -> None:
    """Apply what the client sends: stdin bytes, resize, EOF, signals."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                data: bytes = msg["bytes"]
                if data and data[0] in (Stream.stdin, Stream.pty) and proc.status is None:
                    with contextlib.suppress(HutchError, OSError):
                        await t.write_stdin(proc, data[1:])
                continue
            try:
                frame = _frames.validate_json(msg.get("text") or "")
            except ValidationError:
                continue
            if isinstance(frame, ResizeFrame) and proc.pty_master is not None:
                with contextlib.suppress(HutchError, OSError):
                    await t.resize(proc, PtySize(cols=frame.cols, rows=frame.rows))
            elif isinstance(frame, CloseStdinFrame):
                t.close_stdin(proc)
            elif isinstance(frame, SignalFrame) and proc.status is None:
                with contextlib.suppress(HutchError):
                    await t.runtime.signal(t.plan, proc.pid, frame.signal)
