"""`AsyncSandbox`: the asyncio twin of `hutch.sdk.sandbox_sync.main.Sandbox`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from hutch.models.common import DEFAULT_DISK_MB, IsolationClass, SandboxState
from hutch.models.network import NetworkPolicy
from hutch.models.ports import TOKEN_TTL_DEFAULT_S, PortInfo
from hutch.models.sandbox import SandboxStats
from hutch.sdk import _ops
from hutch.sdk._http import AsyncHttp
from hutch.sdk.config import ConnectionConfig
from hutch.sdk.exceptions import SandboxNotFoundError
from hutch.sdk.sandbox_async.commands import AsyncCommands
from hutch.sdk.sandbox_async.files import AsyncFiles
from hutch.sdk.sandbox_async.network import AsyncNetwork
from hutch.sdk.sandbox_async.pty import AsyncPty
from hutch.sdk.types import SandboxInfo


class AsyncSandboxPaginator:
    """Pages of `GET /v1/sandboxes`: `async for` every sandbox, or `await next_items()`."""

    def __init__(
        self,
        http: AsyncHttp,
        state: SandboxState | str | None,
        metadata: dict[str, str] | None,
        limit: int | None,
    ) -> None:
        self._http = http
        self._state, self._metadata, self._limit = state, metadata, limit
        self._cursor: str | None = None
        self.has_next = True

    async def next_items(self) -> list[SandboxInfo]:
        """The next page (empty when there are no more)."""
        if not self.has_next:
            return []
        page = await self._http.send(
            _ops.list_sandboxes(
                state=self._state, metadata=self._metadata, limit=self._limit, cursor=self._cursor
            )
        )
        self._cursor = page.next_cursor
        self.has_next = bool(page.next_cursor)
        if not self.has_next:
            await self.aclose()
        return page.items

    async def __aiter__(self) -> AsyncIterator[SandboxInfo]:
        while self.has_next:
            for item in await self.next_items():
                yield item

    async def aclose(self) -> None:
        """Release the HTTP connection (done by itself after the last page)."""
        await self._http.close()


class AsyncSandbox:
    """An isolated Linux sandbox. Create one with `await AsyncSandbox.create()`; use it as an
    async context manager to have it killed on exit."""

    def __init__(self, info: SandboxInfo, http: AsyncHttp) -> None:
        self._info = info
        self._http = http
        self._commands = AsyncCommands(info.sandbox_id, http)
        self._files = AsyncFiles(info.sandbox_id, http)
        self._pty = AsyncPty(info.sandbox_id, http)
        self._network = AsyncNetwork(info.sandbox_id, http)

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id (`sbx_…`)."""
        return self._info.sandbox_id

    @property
    def info(self) -> SandboxInfo:
        """What the API last said about this sandbox (`get_info()` asks again)."""
        return self._info

    @property
    def commands(self) -> AsyncCommands:
        """Run commands."""
        return self._commands

    @property
    def files(self) -> AsyncFiles:
        """Read and write files."""
        return self._files

    @property
    def pty(self) -> AsyncPty:
        """Interactive terminals."""
        return self._pty

    @property
    def network(self) -> AsyncNetwork:
        """The egress policy."""
        return self._network

    @property
    def connection_config(self) -> ConnectionConfig:
        """Where this sandbox's API lives."""
        return self._http.config

    @classmethod
    async def create(
        cls,
        template: str = "base",
        timeout: int = 300,
        *,
        vcpu: int = 1,
        memory_mb: int = 1024,
        disk_mb: int = DEFAULT_DISK_MB,
        isolation: IsolationClass | str = IsolationClass.namespace,
        envs: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        secrets: list[str] | dict[str, str] | None = None,
        network: NetworkPolicy | dict[str, Any] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncSandbox:
        """Create a sandbox and wait until it runs. `timeout` is its lifetime in seconds;
        `secrets` names project secrets to inject as env (or maps ENV_NAME to SECRET_NAME)."""
        call = _ops.create_sandbox(
            template=template,
            timeout=timeout,
            vcpu=vcpu,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            isolation=isolation,
            envs=envs,
            metadata=metadata,
            idempotency_key=idempotency_key,
            secrets=secrets,
            network=network,
        )
        http = AsyncHttp(ConnectionConfig.resolve(api_url, api_key, request_timeout))
        try:
            return cls(await http.send(call), http)
        except BaseException:
            await http.close()
            raise

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncSandbox:
        """Attach to an existing sandbox by id (from anywhere that has the key)."""
        http = AsyncHttp(ConnectionConfig.resolve(api_url, api_key, request_timeout))
        try:
            return cls(await http.send(_ops.get_sandbox(sandbox_id)), http)
        except BaseException:
            await http.close()
            raise

    @classmethod
    def list(
        cls,
        *,
        state: SandboxState | str | None = None,
        metadata: dict[str, str] | None = None,
        limit: int | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncSandboxPaginator:
        """Sandboxes of the key's project, filtered by state and metadata, page by page."""
        http = AsyncHttp(ConnectionConfig.resolve(api_url, api_key, request_timeout))
        return AsyncSandboxPaginator(http, state, metadata, limit)

    async def get_info(self) -> SandboxInfo:
        """Fresh information from the API (state, expiry, metadata...)."""
        self._info = await self._http.send(_ops.get_sandbox(self.sandbox_id))
        return self._info

    async def is_running(self) -> bool:
        """Whether the sandbox is running."""
        try:
            return (await self.get_info()).state == SandboxState.running
        except SandboxNotFoundError:
            return False

    async def set_timeout(self, timeout: int) -> None:
        """Kill the sandbox `timeout` seconds from now (extends or shortens its life)."""
        self._info = await self._http.send(_ops.set_timeout(self.sandbox_id, timeout))

    async def stats(self) -> SandboxStats:
        """Live CPU, memory, disk and process counts."""
        return await self._http.send(_ops.sandbox_stats(self.sandbox_id))

    async def get_host(self, port: int) -> str:
        """The host name serving `port` by host routing, e.g. `8000-sbx-01j….localhost:8787`."""
        return (await self._http.send(_ops.port_info(self.sandbox_id, port))).host

    async def get_url(
        self,
        port: int,
        path: str = "/",
        *,
        signed: bool = False,
        expires_in: int = TOKEN_TTL_DEFAULT_S,
        routing: str = "host",
    ) -> str:
        """URL of `path` on `port`. With `signed`, it carries a token that opens this port
        (only) to anyone holding the URL until `expires_in` seconds from now. `routing="path"`
        gives the `/v1/sandboxes/{id}/ports/{port}/…` form, which needs no wildcard DNS."""
        if signed:
            token = await self._http.send(_ops.port_token(self.sandbox_id, port, expires_in))
            return _ops.port_url(token, path, routing)
        info = await self._http.send(_ops.port_info(self.sandbox_id, port))
        return _ops.port_url(info, path, routing)

    async def get_port(self, port: int) -> PortInfo:
        """Whether `port` is public, and its host- and path-routed URLs."""
        return await self._http.send(_ops.port_info(self.sandbox_id, port))

    async def set_port_public(self, port: int, public: bool = True) -> PortInfo:
        """Make `port` reachable without a key or token (or private again with False)."""
        return await self._http.send(_ops.set_port(self.sandbox_id, port, public))

    async def kill(self) -> bool:
        """Kill the sandbox; its file system is gone afterwards. False if it was already gone."""
        try:
            await self._http.send(_ops.kill_sandbox(self.sandbox_id))
        except SandboxNotFoundError:
            return False
        return True

    async def close(self) -> None:
        """Release HTTP connections (the sandbox keeps running)."""
        await self._http.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.close()

    def __repr__(self) -> str:
        return f"AsyncSandbox(sandbox_id={self.sandbox_id!r})"
