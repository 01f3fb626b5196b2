"""An in-memory stand-in for the runner protocol (`RunnerPort`), used until the real runner client
exists in this tree. It answers like the runner does (same models, same error codes) so the API's
own logic — tenancy, state machine, proxying, reconciliation — is tested without a sandbox.
Tests that need real sandboxes live in tests/integration/api and skip without the runner."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio

from hutch.models.common import ErrorCode, ExecUser, HutchError, IsolationClass, SandboxState
from hutch.models.events import StateEvent, UsageHeartbeat
from hutch.models.exec import (
    ExecRequest,
    ExecResult,
    ProcessInfo,
    SignalRequest,
    StdinRequest,
    Stream,
)
from hutch.models.files import Exists, FileInfo, FileType, MakeDir, Rename, WriteInfo
from hutch.models.sandbox import (
    IsolationInfo,
    RunnerCreate,
    RunnerInfo,
    SandboxInfo,
    SandboxStats,
    SetTimeout,
    TemplateInfo,
)

CHUNK = 64 * 1024


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Sandbox:
    info: SandboxInfo
    files: dict[str, bytes] = field(default_factory=dict)
    procs: dict[int, ProcessInfo] = field(default_factory=dict)


class EchoSocket:
    """The runner's exec stream, simplified: echoes stdin frames back as stdout until closed."""

    def __init__(self) -> None:
        self.out_tx, self.out_rx = anyio.create_memory_object_stream[str | bytes](100)
        self.received: list[str | bytes] = []

    async def send(self, message: str | bytes) -> None:
        self.received.append(message)
        if isinstance(message, bytes):
            if message[:1] == bytes([Stream.stdin]):
                await self.out_tx.send(bytes([Stream.stdout]) + message[1:])
            return
        frame = json.loads(message)
        if frame["type"] == "start":
            await self.out_tx.send(json.dumps({"type": "started", "pid": 42}))
        elif frame["type"] == "close_stdin":
            await self.out_tx.send(json.dumps({"type": "exit", "exit_code": 0}))
            await self.out_tx.aclose()

    async def recv(self) -> str | bytes:
        return await self.out_rx.receive()  # raises EndOfStream once closed

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.out_tx.aclose()


class InMemoryRunner:
    """Implements `hutch.services.runner_port.RunnerPort` in memory."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (one instance serves many tests)."""
        self.sandboxes: dict[str, _Sandbox] = {}
        self.created: list[RunnerCreate] = []
        self.fail_next_create: Exception | None = None
        # Called as the runner starts acting, to observe what the database held at that moment.
        self.before_create: Callable[[RunnerCreate], None] | None = None
        self.before_kill: Callable[[str], None] | None = None
        self.sockets: list[EchoSocket] = []
        self.upload_chunks: list[int] = []
        self.pending_events: list[StateEvent | UsageHeartbeat] = []
        self.closed = False

    def _get(self, sandbox_id: str) -> _Sandbox:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None:
            raise HutchError(ErrorCode.sandbox_not_found, f"sandbox {sandbox_id} not found")
        return sb

    async def info(self) -> RunnerInfo:
        return RunnerInfo(
            version="test",
            cgroup_version=2,
            isolation=[IsolationInfo(isolation=IsolationClass.namespace, available=True)],
            templates=[TemplateInfo(name="base", ready=True)],
            sandboxes=len(self.sandboxes),
        )

    async def create(self, req: RunnerCreate) -> SandboxInfo:
        self.created.append(req)
        if self.before_create is not None:
            self.before_create(req)
        if self.fail_next_create is not None:
            err, self.fail_next_create = self.fail_next_create, None
            raise err
        if req.template != "base":
            raise HutchError(ErrorCode.template_not_found, f"template {req.template!r} not found")
        assert req.sandbox_id is not None
        now = _now()
        info = SandboxInfo(
            sandbox_id=req.sandbox_id,
            template=req.template,
            isolation=req.isolation,
            vcpu=req.vcpu,
            memory_mb=req.memory_mb,
            disk_mb=req.disk_mb,
            state=SandboxState.running,
            created_at=now,
            expires_at=now + timedelta(seconds=req.timeout_s),
        )
        self.sandboxes[req.sandbox_id] = _Sandbox(info)
        return info

    async def get(self, sandbox_id: str) -> SandboxInfo:
        return self._get(sandbox_id).info

    async def list(self) -> list[SandboxInfo]:
        return [s.info for s in self.sandboxes.values()]

    async def kill(self, sandbox_id: str) -> None:
        if self.before_kill is not None:
            self.before_kill(sandbox_id)
        self._get(sandbox_id)
        del self.sandboxes[sandbox_id]

    async def set_timeout(self, sandbox_id: str, req: SetTimeout) -> SandboxInfo:
        sb = self._get(sandbox_id)
        sb.info = sb.info.model_copy(
            update={"expires_at": _now() + timedelta(seconds=req.timeout_s)}
        )
        return sb.info

    async def stats(self, sandbox_id: str) -> SandboxStats:
        sb = self._get(sandbox_id)
        return SandboxStats(
            sandbox_id=sandbox_id,
            cpu_time_us=1,
            memory_bytes=1,
            memory_peak_bytes=1,
            memory_limit_bytes=sb.info.memory_mb * 2**20,
            disk_used_bytes=0,
            disk_limit_bytes=sb.info.disk_mb * 2**20,
            pids=1,
            pids_limit=1024,
        )

    async def exec(self, sandbox_id: str, req: ExecRequest) -> ExecResult | ProcessInfo:
        sb = self._get(sandbox_id)
        argv = req.argv()
        pid = 100 + len(sb.procs)
        now = _now()
        if req.background:
            p = ProcessInfo(pid=pid, cmd=argv, tag=req.tag, running=True, started_at=now)
            sb.procs[pid] = p
            return p
        out = " ".join(argv[1:]) + "\n" if argv[0] == "echo" else ""
        return ExecResult(pid=pid, exit_code=0, stdout=out, started_at=now, ended_at=now)

    async def processes(self, sandbox_id: str) -> list[ProcessInfo]:
        return list(self._get(sandbox_id).procs.values())

    def _proc(self, sandbox_id: str, pid: int) -> ProcessInfo:
        p = self._get(sandbox_id).procs.get(pid)
        if p is None:
            raise HutchError(ErrorCode.process_not_found, f"process {pid} not found")
        return p

    async def signal(self, sandbox_id: str, pid: int, req: SignalRequest) -> None:
        self._proc(sandbox_id, pid)

    async def stdin(self, sandbox_id: str, pid: int, req: StdinRequest) -> None:
        self._proc(sandbox_id, pid)

    async def wait(self, sandbox_id: str, pid: int) -> ExecResult:
        p = self._proc(sandbox_id, pid)
        return ExecResult(pid=pid, exit_code=0, started_at=p.started_at, ended_at=_now())

    async def read_file(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        data = self._get(sandbox_id).files.get(path)
        if data is None:
            raise HutchError(ErrorCode.file_not_found, f"{path} not found")
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]

    async def write_file(
        self, sandbox_id: str, path: str, body: AsyncIterable[bytes], user: ExecUser
    ) -> WriteInfo:
        sb = self._get(sandbox_id)
        buf = bytearray()
        n = 0
        async for chunk in body:
            buf += chunk
            n += 1
        self.upload_chunks.append(n)
        sb.files[path] = bytes(buf)
        return WriteInfo(path=path, size=len(buf))

    def _info(self, path: str, size: int, kind: FileType = FileType.file) -> FileInfo:
        name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        return FileInfo(
            name=name, path=path, type=kind, size=size, mode=0o644, uid=1000, gid=1000, mtime=_now()
        )

    async def list_files(self, sandbox_id: str, path: str, depth: int) -> list[FileInfo]:
        files = self._get(sandbox_id).files
        prefix = path.rstrip("/") + "/"
        return [self._info(p, len(d)) for p, d in files.items() if p.startswith(prefix)]

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        data = self._get(sandbox_id).files.get(path)
        if data is None:
            raise HutchError(ErrorCode.file_not_found, f"{path} not found")
        return self._info(path, len(data))

    async def exists(self, sandbox_id: str, path: str) -> Exists:
        return Exists(path=path, exists=path in self._get(sandbox_id).files)

    async def mkdir(self, sandbox_id: str, req: MakeDir) -> FileInfo:
        self._get(sandbox_id)
        return self._info(req.path, 0, FileType.dir)

    async def rename(self, sandbox_id: str, req: Rename) -> FileInfo:
        files = self._get(sandbox_id).files
        if req.src not in files:
            raise HutchError(ErrorCode.file_not_found, f"{req.src} not found")
        files[req.dst] = files.pop(req.src)
        return self._info(req.dst, len(files[req.dst]))

    async def remove(self, sandbox_id: str, path: str, recursive: bool) -> None:
        files = self._get(sandbox_id).files
        if files.pop(path, None) is None:
            raise HutchError(ErrorCode.file_not_found, f"{path} not found")

    @contextlib.asynccontextmanager
    async def websocket(self, path: str) -> AsyncIterator[EchoSocket]:
        sandbox_id = path.split("/")[3]
        self._get(sandbox_id)
        sock = EchoSocket()
        self.sockets.append(sock)
        try:
            yield sock
        finally:
            await sock.close()

    async def events(self) -> AsyncIterator[StateEvent | UsageHeartbeat]:
        while self.pending_events:
            yield self.pending_events.pop(0)
        await anyio.sleep_forever()
        yield  # pragma: no cover  (makes this an async generator)

    async def aclose(self) -> None:
        self.closed = True

    # --- test helpers: things that happen on the host behind the API's back ---

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox disappears (e.g. the runner restarted)."""
        del self.sandboxes[sandbox_id]

    def orphan(self, sandbox_id: str) -> None:
        """A sandbox the database never heard of."""
        now = _now()
        self.sandboxes[sandbox_id] = _Sandbox(
            SandboxInfo(
                sandbox_id=sandbox_id,
                template="base",
                isolation=IsolationClass.namespace,
                vcpu=1,
                memory_mb=1024,
                disk_mb=4096,
                state=SandboxState.running,
                created_at=now,
                expires_at=now + timedelta(seconds=60),
            )
        )
