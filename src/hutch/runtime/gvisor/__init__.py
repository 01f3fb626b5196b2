"""The gVisor isolation class: sandboxes with a kernel of their own (runsc)."""

from hutch.runtime.gvisor.cleanup import Leftovers, SandboxPaths, scan
from hutch.runtime.gvisor.runsc import RunscOptions
from hutch.runtime.gvisor.runtime import GVisorRuntime

__all__ = ["GVisorRuntime", "Leftovers", "RunscOptions", "SandboxPaths", "scan"]
