"""Python SDK: `Sandbox` (blocking) and `AsyncSandbox` (asyncio), shaped like e2b's SDK.

from hutch import Sandbox

with Sandbox.create() as sb:
    print(sb.commands.run("echo hi").stdout)
"""

from hutch.models.exec import ProcessInfo, PtySize
from hutch.models.files import FileInfo, FileType, WriteInfo
from hutch.models.network import NetworkPolicy
from hutch.models.sandbox import SandboxStats
from hutch.sdk.client import Hutch
from hutch.sdk.config import ConnectionConfig, RetryPolicy
from hutch.sdk.exceptions import *  # noqa: F403
from hutch.sdk.exceptions import HutchSDKError
from hutch.sdk.sandbox_async import (
    AsyncCommandHandle,
    AsyncFileStream,
    AsyncPtyHandle,
    AsyncSandbox,
    AsyncSandboxPaginator,
)
from hutch.sdk.sandbox_sync import (
    CommandHandle,
    FileStream,
    PtyHandle,
    Sandbox,
    SandboxPaginator,
)
from hutch.sdk.types import (
    CommandExitError,
    CommandExitException,
    CommandResult,
    SandboxInfo,
    SandboxPage,
)

__all__ = [
    "AsyncCommandHandle",
    "AsyncFileStream",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncSandboxPaginator",
    "CommandExitError",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "ConnectionConfig",
    "FileInfo",
    "FileStream",
    "FileType",
    "Hutch",
    "HutchSDKError",
    "NetworkPolicy",
    "ProcessInfo",
    "PtyHandle",
    "PtySize",
    "RetryPolicy",
    "Sandbox",
    "SandboxInfo",
    "SandboxPage",
    "SandboxPaginator",
    "SandboxStats",
    "WriteInfo",
]
