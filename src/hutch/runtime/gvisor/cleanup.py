"""Where a gVisor sandbox leaves traces on the host, and how to find them after a crash."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from hutch.runtime.base import SandboxPlan
from hutch.runtime.gvisor import cgroups
from hutch.runtime.gvisor.mounts import mounts_under
from hutch.runtime.gvisor.runsc import RunscOptions


@dataclass(frozen=True)
class SandboxPaths:
    """Host paths this runtime creates: in the runner's state dir (upper/work are not ours)
    and the sandbox's exposure point beneath the options' `expose_dir`."""

    state_dir: Path
    exposed: Path

    @classmethod
    def of(cls, plan: SandboxPlan, options: RunscOptions | None = None) -> SandboxPaths:
        """Paths for `plan`."""
        expose_dir = (options or RunscOptions()).expose_dir
        return cls(plan.state_dir, expose_dir / plan.sandbox_id)

    @property
    def exposed_rootfs(self) -> Path:
        """A bind of `rootfs` that runsc's unprivileged file proxy can reach."""
        return self.exposed / "rootfs"

    @property
    def rootfs(self) -> Path:
        """The overlay mount point: the sandbox's `/` as seen from the host."""
        return self.state_dir / "rootfs"

    @property
    def lower(self) -> Path:
        """Parent of the id-mapped template layer mounts."""
        return self.state_dir / "lower"

    @property
    def bundle(self) -> Path:
        """The OCI bundle (config.json)."""
        return self.state_dir / "bundle"

    @property
    def runsc_root(self) -> Path:
        """runsc's state root for this sandbox alone."""
        return self.state_dir / "runsc"

    @property
    def disk(self) -> Path:
        """Mount point of the sandbox's disk (a sparse ext4 image: the disk quota)."""
        return self.state_dir / "disk"

    @property
    def disk_image(self) -> Path:
        """The disk image file."""
        return self.state_dir / "disk.img"

    @property
    def upper(self) -> Path:
        """The writable layer, on the sandbox's disk."""
        return self.disk / "upper"

    @property
    def work(self) -> Path:
        """overlayfs work dir, on the sandbox's disk."""
        return self.disk / "work"

    def owned_dirs(self) -> list[Path]:
        """Directories this runtime creates and must remove."""
        return [self.rootfs, self.lower, self.bundle, self.runsc_root, self.exposed, self.disk]

    def mount_roots(self) -> list[Path]:
        """Where this runtime mounts things (exposure first: it sits on top of rootfs; the disk
        last: the overlay holds it)."""
        return [self.exposed, self.rootfs, self.lower, self.disk]


@dataclass
class Leftovers:
    """Traces of a sandbox still on the host; empty after a complete destroy."""

    processes: list[int] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        """Whether nothing is left."""
        return not (self.processes or self.mounts or self.cgroups or self.dirs)


def runsc_processes(runsc_root: Path) -> list[int]:
    """Host pids of runsc processes (sandbox, gofer, exec, ...) working on `runsc_root`."""
    needle = f"--root={runsc_root}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if needle in args:
            found.append(int(entry.name))
    return sorted(found)


def sandbox_processes(plan: SandboxPlan, options: RunscOptions | None = None) -> list[int]:
    """Every host process that belongs to the sandbox: by runsc root, or by cgroup."""
    opts = options or RunscOptions()
    pids = set(runsc_processes(SandboxPaths.of(plan, opts).runsc_root))
    pids |= cgroups.member_pids(plan.sandbox_id, opts.cgroup_parent)
    pids.discard(os.getpid())
    return sorted(p for p in pids if _alive(p))


def _alive(pid: int) -> bool:
    # Zombies still have a /proc entry but are already gone for every purpose that matters here.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def kill_processes(plan: SandboxPlan, options: RunscOptions | None = None) -> None:
    """SIGKILL every host process of the sandbox."""
    for pid in sandbox_processes(plan, options):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def scan(plan: SandboxPlan, options: RunscOptions | None = None) -> Leftovers:
    """Everything of the sandbox still on the host."""
    opts = options or RunscOptions()
    paths = SandboxPaths.of(plan, opts)
    return Leftovers(
        processes=sandbox_processes(plan, opts),
        mounts=[m for root in paths.mount_roots() for m in mounts_under(root)],
        cgroups=cgroups.existing(plan.sandbox_id, opts.cgroup_parent),
        dirs=[d for d in paths.owned_dirs() if d.exists()],
    )
