"""The seam between the runner and the kernel: one `Runtime` protocol per isolation class.

The runner owns bookkeeping (ids, uid ranges, timeouts, persistence of state); a runtime only
knows how to make, drive and unmake one sandbox. Runtimes never import services or db.
"""

from __future__ import annotations

import abc
import socket
from dataclasses import dataclass, field
from pathlib import Path

from hutch.models import ErrorCode, ExecRequest, HutchError, IsolationClass, PtySize, SandboxStats


@dataclass(frozen=True)
class SandboxPlan:
    """Everything a runtime needs to build one sandbox, decided by the runner beforehand.

    It is written to disk (state dir) before the runtime acts, so after a crash the runner can
    find and undo whatever part of the plan was carried out.
    """

    sandbox_id: str
    isolation: IsolationClass
    template_layers: tuple[Path, ...]  # read-only, lowest first
    vcpu: int
    memory_mb: int
    disk_mb: int
    env: dict[str, str]
    uid_base: int  # sandbox uid 0 is host uid `uid_base`; the range is 65536 wide
    slot: int  # small integer unique among live sandboxes (uid range, quota project id)
    state_dir: Path  # runner-owned directory for this sandbox (upper layer, sockets, metadata)


@dataclass
class ProcessStdio:
    """File descriptors given to a new process; the runtime takes ownership and closes them.

    With a PTY, `stdin`/`stdout`/`stderr` are unused and the runtime returns the master side.
    """

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    pty: PtySize | None = None


@dataclass
class SpawnedProcess:
    """A process started in a sandbox."""

    pid: int  # as seen inside the sandbox
    pty_master: int | None = None  # the runner owns and closes it


@dataclass
class ExitStatus:
    """How a process ended."""

    code: int | None
    signal: int | None = None


@dataclass
class RuntimeHealth:
    """Whether the class can run on this host."""

    available: bool
    reason: str | None = None
    details: dict[str, str] = field(default_factory=dict)


class Runtime(abc.ABC):
    """One isolation class. All methods may be called concurrently for different sandboxes."""

    isolation: IsolationClass
    supports_network = False  # whether `netns_pid` can give the runner the sandbox's netns

    def netns_pid(self, plan: SandboxPlan) -> int:
        """A host pid inside the sandbox's network namespace, for the runner to plug its
        egress link into. Runtimes without that seam refuse network policies loudly."""
        raise HutchError(
            ErrorCode.isolation_unavailable,
            f"network policies are not supported for {self.isolation.value!r} sandboxes on "
            "this runner; use the 'namespace' isolation class",
        )

    @abc.abstractmethod
    def health(self) -> RuntimeHealth:
        """Whether this class can run here; if not, a reason a person can act on."""

    def release(self) -> None:
        """The runner stops and no sandbox of this class is left: remove what the class set up
        on the host for all of its sandboxes (nothing, unless a runtime says otherwise)."""
        return None

    @abc.abstractmethod
    async def create(self, plan: SandboxPlan) -> None:
        """Build and start the sandbox; return once a command can be executed in it.

        On failure it must leave nothing behind (call `destroy` on its own partial work)."""

    @abc.abstractmethod
    async def destroy(self, plan: SandboxPlan) -> None:
        """Kill every process and remove every trace of the sandbox. Idempotent; must also
        work for a sandbox left half-made by a crash (the runner calls it on reconcile)."""

    @abc.abstractmethod
    async def is_alive(self, plan: SandboxPlan) -> bool:
        """Whether the sandbox still runs (used to adopt sandboxes after a runner restart)."""

    @abc.abstractmethod
    async def spawn(
        self, plan: SandboxPlan, req: ExecRequest, stdio: ProcessStdio
    ) -> tuple[SpawnedProcess, ExitWaiter]:
        """Start `req` in the sandbox; the waiter resolves when the process ends."""

    @abc.abstractmethod
    async def signal(self, plan: SandboxPlan, pid: int, sig: int) -> None:
        """Send `sig` to a process (and its process group) started by `spawn`."""

    @abc.abstractmethod
    async def resize(self, plan: SandboxPlan, pid: int, size: PtySize) -> None:
        """Resize a PTY process's terminal."""

    @abc.abstractmethod
    def root_path(self, plan: SandboxPlan) -> Path:
        """A host path whose directory is the sandbox's `/` (for the files API, which resolves
        every path beneath it with the kernel's RESOLVE_IN_ROOT)."""

    @abc.abstractmethod
    async def stats(self, plan: SandboxPlan) -> SandboxStats:
        """Live resource use."""

    async def connect_port(self, plan: SandboxPlan, port: int) -> socket.socket:
        """A TCP connection to `port` on the sandbox's own loopback (127.0.0.1, then ::1),
        made without giving the sandbox any network. Returns a connected non-blocking socket
        the caller owns; raises `port_unreachable` when nothing listens there.

        Classes that cannot reach the sandbox's loopback keep this default."""
        raise HutchError(
            ErrorCode.ports_unsupported,
            f"the {self.isolation.value} isolation class cannot expose sandbox ports",
        )


class ExitWaiter(abc.ABC):
    """Resolves with the exit status of one spawned process."""

    @abc.abstractmethod
    async def wait(self) -> ExitStatus:
        """Wait for the process to end."""
