"""`Sandbox`: the blocking SDK entry point (create, connect, list, kill, and the
`commands` / `files` / `pty` namespaces)."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

from hutch.models.common import DEFAULT_DISK_MB, IsolationClass, SandboxState
from hutch.models.network import NetworkPolicy
from hutch.models.ports import TOKEN_TTL_DEFAULT_S, PortInfo
from hutch.models.sandbox import SandboxStats
from hutch.sdk import _ops
from hutch.sdk._http import SyncHttp
from hutch.sdk.config import ConnectionConfig
from hutch.sdk.exceptions import SandboxNotFoundError
from hutch.sdk.sandbox_sync.commands import Commands
from hutch.sdk.sandbox_sync.files import Files
from hutch.sdk.sandbox_sync.network import Network
from hutch.sdk.sandbox_sync.pty import Pty
from hutch.sdk.types import SandboxInfo


class SandboxPaginator:
    """Pages of `GET /v1/sandboxes`: iterate for every sandbox, or call `next_items()`."""

    def __init__(
        self,
        http: SyncHttp,
        state: SandboxState | str | None,
        metadata: dict[str, str] | None,
        limit: int | None,
    ) -> None:
        self._http = http
        self._state, self._metadata, self._limit = state, metadata, limit
        self._cursor: str | None = None
        self.has_next = True

    def next_items(self) -> list[SandboxInfo]:
        """The next page (empty when there are no more)."""
        if not self.has_next:
            return []
        page = self._http.send(
            _ops.list_sandboxes(
                state=self._state, metadata=self._metadata, limit=self._limit, cursor=self._cursor
            )
        )
        self._cursor = page.next_cursor
        self.has_next = bool(page.next_cursor)
        if not self.has_next:
            self.close()
        return page.items

    def __iter__(self) -> Iterator[SandboxInfo]:
        while self.has_next:
            yield from self.next_items()

    def close(self) -> None:
        """Release the HTTP connection (done by itself after the last page)."""
        self._http.close()


class Sandbox:
    """An isolated Linux sandbox. Create one with `Sandbox.create()`; use it as a context
    manager to have it killed on exit."""

    def __init__(self, info: SandboxInfo, http: SyncHttp) -> None:
        self._info = info
        self._http = http
        self._commands = Commands(info.sandbox_id, http)
        self._files = Files(info.sandbox_id, http)
        self._pty = Pty(info.sandbox_id, http)
        self._network = Network(info.sandbox_id, http)

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id (`sbx_…`)."""
        return self._info.sandbox_id

    @property
    def info(self) -> SandboxInfo:
        """What the API last said about this sandbox (`get_info()` asks again)."""
        return self._info

    @property
    def commands(self) -> Commands:
        """Run commands."""
        return self._commands

    @property
    def files(self) -> Files:
        """Read and write files."""
        return self._files

    @property
    def pty(self) -> Pty:
        """Interactive terminals."""
        return self._pty

    @property
    def network(self) -> Network:
        """The egress policy."""
        return self._network

    @property
    def connection_config(self) -> ConnectionConfig:
        """Where this sandbox's API lives."""
        return self._http.config

    @classmethod
    def create(
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
    ) -> Sandbox:
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
        http = SyncHttp(ConnectionConfig.resolve(api_url, api_key, request_timeout))
        try:
            return cls(http.send(call), http)
        except BaseException:
            http.close()
            raise

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Attach to an existing sandbox by id (from anywhere that has the key)."""
        http = SyncHttp(ConnectionConfig.resolve(api_url, api_key, request_timeout))
        try:
            return cls(http.send(_ops.get_sandbox(sandbox_id)), http)
        except BaseException:
            http.close()
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
    ) -> SandboxPaginator:
        """Sandboxes of the key's project, filtered by state and metadata, page by page."""
        http = SyncHttp(ConnectionConfig.resolve(api_url, api_key, request_timeout))
        return SandboxPaginator(http, state, metadata, limit)

    def get_info(self) -> SandboxInfo:
        """Fresh information from the API (state, expiry, metadata...)."""
        self._info = self._http.send(_ops.get_sandbox(self.sandbox_id))
        return self._info

    def is_running(self) -> bool:
        """Whether the sandbox is running."""
        try:
            return self.get_info().state == SandboxState.running
        except SandboxNotFoundError:
            return False

    def set_timeout(self, timeout: int) -> None:
        """Kill the sandbox `timeout` seconds from now (extends or shortens its life)."""
        self._info = self._http.send(_ops.set_timeout(self.sandbox_id, timeout))

    def stats(self) -> SandboxStats:
        """Live CPU, memory, disk and process counts."""
        return self._http.send(_ops.sandbox_stats(self.sandbox_id))

    def get_host(self, port: int) -> str:
        """The host name serving `port` by host routing, e.g. `8000-sbx-01j….localhost:8787`."""
        return (self._http.send(_ops.port_info(self.sandbox_id, port))).host

    def get_url(
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
            token = self._http.send(_ops.port_token(self.sandbox_id, port, expires_in))
            return _ops.port_url(token, path, routing)
        info = self._http.send(_ops.port_info(self.sandbox_id, port))
        return _ops.port_url(info, path, routing)

    def get_port(self, port: int) -> PortInfo:
        """Whether `port` is public, and its host- and path-routed URLs."""
        return self._http.send(_ops.port_info(self.sandbox_id, port))

    def set_port_public(self, port: int, public: bool = True) -> PortInfo:
        """Make `port` reachable without a key or token (or private again with False)."""
        return self._http.send(_ops.set_port(self.sandbox_id, port, public))

    def kill(self) -> bool:
        """Kill the sandbox; its file system is gone afterwards. False if it was already gone."""
        try:
            self._http.send(_ops.kill_sandbox(self.sandbox_id))
        except SandboxNotFoundError:
            return False
        return True

    def close(self) -> None:
        """Release HTTP connections (the sandbox keeps running)."""
        self._http.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.kill()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r})"
