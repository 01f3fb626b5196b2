"""The API's runner in API tests: a real runner process (started on first use, as root) reached
through the real `RunnerClient`. It runs in a network namespace of its own, so an egress policy a
test sets (links, forwarding, nftables) never touches the machine's own network.

Around the client it only observes: it records the create requests the API sent, counts the pieces
an upload arrived in, and can call a test's function just before a create or kill reaches the
runner (to look at what the database held at that moment). Things that happen "behind the API's
back" (`vanish`, `orphan`) are real operations on the runner's own socket.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from hutch.models.common import ErrorCode, ExecUser, HutchError
from hutch.models.files import WriteInfo
from hutch.models.sandbox import RunnerCreate, SandboxInfo
from hutch.runner.client import RunnerClient
from tests.support.runner import RunnerProc, ensure_base_template, start_runner


class LiveRunner:
    """Satisfies `hutch.services.runner_port.RunnerPort` with a real runner."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: RunnerProc | None = None
        self.netns: str | None = None
        # httpx pools belong to one event loop; tests run the app on more than one.
        self._clients: dict[asyncio.AbstractEventLoop, RunnerClient] = {}
        self.reset_hooks()

    def reset_hooks(self) -> None:
        """Forget what was observed (one instance serves many tests)."""
        self.created: list[RunnerCreate] = []
        self.before_create: Callable[[RunnerCreate], None] | None = None
        self.before_kill: Callable[[str], None] | None = None
        self.upload_chunks: list[int] = []

    # --- the real runner ---------------------------------------------------------------

    def start(self) -> RunnerProc:
        """The runner process, started on first use."""
        if self.proc is None or self.proc.proc.poll() is not None:
            if os.geteuid() != 0:
                raise HutchError(ErrorCode.runner_unavailable, "a real runner needs root")
            ensure_base_template()
            if self.netns is None:
                self.netns = f"hutch-api-{secrets.token_hex(4)}"
                subprocess.run(["ip", "netns", "add", self.netns], check=True)
            self.proc = start_runner(self.data_dir, netns=self.netns)
        return self.proc

    def _client(self) -> RunnerClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = RunnerClient(self.start().socket)
        return client

    def _sync(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.start().socket))
        return httpx.Client(transport=transport, base_url="http://runner", timeout=60)

    def sandbox_ids(self) -> set[str]:
        """What the host really runs now."""
        with self._sync() as c:
            return {s["sandbox_id"] for s in c.get("/v1/sandboxes").json()}

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox disappears behind the API's back (killed on the runner directly)."""
        with self._sync() as c:
            c.delete(f"/v1/sandboxes/{sandbox_id}").raise_for_status()

    def orphan(self, sandbox_id: str) -> None:
        """A sandbox the database never heard of, created on the runner directly."""
        req = RunnerCreate(sandbox_id=sandbox_id, timeout_s=300)
        with self._sync() as c:
            c.post("/v1/sandboxes", json=req.model_dump(mode="json")).raise_for_status()

    def clean(self) -> None:
        """Kill every sandbox, drop clients of loops that are gone, forget observations."""
        self.reset_hooks()
        self._clients = {lp: c for lp, c in self._clients.items() if not lp.is_closed()}
        if self.proc is not None:
            for sid in self.sandbox_ids():
                self.vanish(sid)

    def stop(self) -> None:
        """Kill every sandbox and stop the runner."""
        if self.proc is not None:
            self.clean()
            self.proc.stop()
        if self.netns is not None:
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
            self.netns = None

    # --- RunnerPort, observed ----------------------------------------------------------

    async def create(self, req: RunnerCreate) -> SandboxInfo:
        self.created.append(req)
        if self.before_create is not None:
            self.before_create(req)
        return await self._client().create(req)

    async def kill(self, sandbox_id: str) -> None:
        if self.before_kill is not None:
            self.before_kill(sandbox_id)
        await self._client().kill(sandbox_id)

    async def write_file(
        self, sandbox_id: str, path: str, body: AsyncIterable[bytes], user: ExecUser
    ) -> WriteInfo:
        slot = len(self.upload_chunks)
        self.upload_chunks.append(0)

        async def counted() -> AsyncIterator[bytes]:
            async for chunk in body:
                self.upload_chunks[slot] += 1
                yield chunk

        return await self._client().write_file(sandbox_id, path, counted(), user)

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def __getattr__(self, name: str) -> Any:
        # Everything else goes straight to the real client of the calling loop.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._client(), name)
