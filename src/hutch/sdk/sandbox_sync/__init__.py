"""The blocking SDK."""

from hutch.sdk.sandbox_sync.commands import CommandHandle, Commands
from hutch.sdk.sandbox_sync.files import Files, FileStream
from hutch.sdk.sandbox_sync.main import Sandbox, SandboxPaginator
from hutch.sdk.sandbox_sync.network import Network
from hutch.sdk.sandbox_sync.pty import Pty, PtyHandle

__all__ = [
    "CommandHandle",
    "Commands",
    "FileStream",
    "Files",
    "Network",
    "Pty",
    "PtyHandle",
    "Sandbox",
    "SandboxPaginator",
]
