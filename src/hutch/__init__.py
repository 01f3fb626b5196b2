"""Hutch: isolated sandboxes for AI agents and the code they write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AsyncSandbox", "NetworkPolicy", "Sandbox", "__version__"]

if TYPE_CHECKING:
    from hutch.sdk import AsyncSandbox, NetworkPolicy, Sandbox


def __getattr__(name: str) -> Any:
    # The SDK is imported lazily so `import hutch` stays cheap for the server and CLI.
    if name in ("Sandbox", "AsyncSandbox", "NetworkPolicy"):
        from hutch import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
