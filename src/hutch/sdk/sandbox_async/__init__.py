"""The asyncio SDK."""

from hutch.sdk.sandbox_async.commands import AsyncCommandHandle, AsyncCommands
from hutch.sdk.sandbox_async.files import AsyncFiles, AsyncFileStream
from hutch.sdk.sandbox_async.main import AsyncSandbox, AsyncSandboxPaginator
from hutch.sdk.sandbox_async.network import AsyncNetwork
from hutch.sdk.sandbox_async.pty import AsyncPty, AsyncPtyHandle

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFileStream",
    "AsyncFiles",
    "AsyncNetwork",
    "AsyncPty",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncSandboxPaginator",
]
