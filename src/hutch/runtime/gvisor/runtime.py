"""The `gvisor` isolation class: each sandbox runs on gVisor's own kernel (runsc, ptrace)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from hutch.models import ErrorCode, ExecRequest, HutchError, IsolationClass, PtySize, SandboxStats
from hutch.runtime.base import (
    ExitWaiter,
    ProcessStdio,
    Runtime,
    RuntimeHealth,
    SandboxPlan,
    SpawnedProcess,
)
from hutch.runtime.gvisor import bundle, cgroups, cleanup, mounts, process
from hutch.runtime.gvisor.bundle import PIDS_LIMIT
from hutch.runtime.gvisor.cleanup import SandboxPaths
from hutch.runtime.gvisor.compat import PRELOAD_PATH, build_statx_shim
from hutch.runtime.gvisor.runsc import Runsc, RunscError, RunscOptions, self_check, version
from hutch.runtime.namespace.disk import DiskImages

log = structlog.get_logger(__name__)

DESTROY_TIMEOUT_S = 20.0

# Returns the network namespace prepared for a sandbox by the network policy code, if any.
NetnsHook = Callable[[SandboxPlan], Path | None]


class GVisorRuntime(Runtime):
    """Sandboxes under runsc: one runsc state root, overlay rootfs and cgroup per sandbox.

    There is deliberately no fallback: if runsc cannot run here, `health()` says so and
    `create` refuses, rather than quietly giving a weaker namespace sandbox.
    """

    isolation = IsolationClass.gvisor

    def __init__(
        self,
        work_dir: Path = Path("/var/lib/hutch/gvisor"),
        *,
        options: RunscOptions | None = None,
        netns_for: NetnsHook | None = None,
    ) -> None:
        """`work_dir`: private files (the compiled compat library); host paths runsc's
        unprivileged file proxy must reach go beneath `options.expose_dir` instead."""
        self.options = options or RunscOptions()
        self.work_dir = work_dir
        self._preload: Path | None = None
        # Network seam: returns a prepared network namespace for the sandbox (egress policy),
        # or None for loopback only. runsc then needs `--network=sandbox`; see RunscOptions.
        self._netns_for = netns_for
        self._health: RuntimeHealth | None = None
        self._procs: dict[str, dict[int, process.Tracked]] = {}
        self._preload_in: dict[str, bool] = {}

    # --- health ---

    def health(self) -> RuntimeHealth:
        """runsc present, the expected version and a throw-away sandbox runs `true`."""
        if self._health is not None and self._health.available:
            return self._health
        self._health = self._check()
        return self._health

    def _check(self) -> RuntimeHealth:
        binary = self.options.binary
        details = {"binary": str(binary), "platform": self.options.platform}
        if not binary.is_file() or not os.access(binary, os.X_OK):
            return RuntimeHealth(
                False,
                f"runsc not found or not executable at {binary}; install the Debian package "
                "`runsc` or point the gVisor runtime at the binary",
                details,
            )
        try:
            details["version"] = version(binary)
        except Exception as e:  # any failure to run it is the reason we report
            return RuntimeHealth(False, f"runsc at {binary} does not run: {e}", details)
        if shutil.which("unshare") is None:
            return RuntimeHealth(False, "`unshare` (util-linux) is missing", details)
        if os.geteuid() != 0:
            return RuntimeHealth(False, "the gvisor class needs the runner to run as root", details)
        t0 = time.monotonic()
        reason = self_check(self.options)
        details["self_check_ms"] = f"{(time.monotonic() - t0) * 1000:.0f}"
        if reason is not None:
            return RuntimeHealth(False, reason, details)
        expose = self.options.expose_dir
        try:
            expose.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(expose, 0o711)
        except OSError as e:
            return RuntimeHealth(False, f"cannot prepare {expose}: {e.strerror}", details)
        for d in [expose, *expose.resolve().parents]:
            if not os.stat(d).st_mode & 0o001:
                return RuntimeHealth(
                    False,
                    f"{d} must be searchable by others (o+x): gVisor's file proxy runs as the "
                    "sandbox's unprivileged uid; choose another expose_dir",
                    details,
                )
        try:
            self._preload = _publish(build_statx_shim(self.work_dir), expose / "lib")
            details["statx_compat"] = "ok"
        except OSError as e:
            # Sandboxes still isolate fine; only coreutils' ls/stat misbehave. Say so loudly.
            details["statx_compat"] = f"missing: {e}"
            log.warning("gvisor.statx_compat_missing", reason=str(e))
        return RuntimeHealth(True, None, details)

    async def _require_available(self) -> None:
        h = await asyncio.to_thread(self.health)
        if not h.available:
            raise HutchError(ErrorCode.isolation_unavailable, f"gvisor: {h.reason}")

    # --- life cycle ---

    def _runsc(self, plan: SandboxPlan) -> Runsc:
        return Runsc(self.options, self._paths(plan).runsc_root)

    def _paths(self, plan: SandboxPlan) -> SandboxPaths:
        return SandboxPaths.of(plan, self.options)

    def leftovers(self, plan: SandboxPlan) -> cleanup.Leftovers:
        """Traces of the sandbox still on the host (empty after `destroy`)."""
        return cleanup.scan(plan, self.options)

    def root_path(self, plan: SandboxPlan) -> Path:
        """The host overlay mount that is the sandbox's `/`."""
        return self._paths(plan).rootfs

    async def create(self, plan: SandboxPlan) -> None:
        """Mount the rootfs, write the bundle, `runsc run --detach`; undo everything on error."""
        await self._require_available()
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self._prepare_rootfs, plan)
            netns = self._netns_for(plan) if self._netns_for else None
            paths = self._paths(plan)
            config = bundle.sandbox_config(
                plan, paths.exposed_rootfs, netns, self._preload, self.options.cgroup_parent
            )
            bundle.write_config(paths.bundle, config)
            paths.runsc_root.mkdir(mode=0o700, exist_ok=True)
            await self._runsc(plan).run(
                "run",
                "--detach",
                f"--bundle={paths.bundle}",
                plan.sandbox_id,
                timeout=60,
                detached_io=True,
            )
            self._drop_mountpoint_placeholders(plan)
            self._preload_in[plan.sandbox_id] = self._preload is not None
        except BaseException as e:
            with contextlib.suppress(Exception):
                await self.destroy(plan)
            if isinstance(e, RunscError):
                raise HutchError(
                    ErrorCode.internal, f"gvisor sandbox did not start: {e.message}"
                ) from e
            if isinstance(e, OSError):
                raise HutchError(
                    ErrorCode.internal, f"gvisor sandbox rootfs could not be prepared: {e}"
                ) from e
            raise
        log.info("gvisor.created", sandbox_id=plan.sandbox_id, ms=_ms(t0))

    def _drop_mountpoint_placeholders(self, plan: SandboxPlan) -> None:
        # runsc's gofer creates every bind-mount destination in the rootfs, even one under the
        # sandbox's in-memory /dev; the mount inside stays, the empty file in the disk layer goes.
        if self._preload is None:
            return
        placeholder = self._paths(plan).rootfs / PRELOAD_PATH.lstrip("/")
        with contextlib.suppress(FileNotFoundError):
            st = placeholder.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                placeholder.unlink()

    def _mount_disk(self, plan: SandboxPlan) -> None:
        """The writable layer lives on its own ext4 image, so a full disk is ENOSPC inside and
        never touches the host's free space (same disk images as the namespace class)."""
        paths = self._paths(plan)
        DiskImages(self.work_dir / "disks").clone(plan.disk_mb, paths.disk_image)
        paths.disk.mkdir(mode=0o700, exist_ok=True)
        # mount(8) sets up the loop device with autoclear: it detaches when unmounted
        subprocess.run(
            [
                "mount",
                "-o",
                "loop,nosuid,nodev,noatime,noinit_itable",
                str(paths.disk_image),
                str(paths.disk),
            ],
            check=True,
            capture_output=True,
        )
        for d in (paths.disk, paths.upper, paths.work):
            d.mkdir(mode=0o755, exist_ok=True)
            os.chown(d, plan.uid_base, plan.uid_base)

    def _prepare_rootfs(self, plan: SandboxPlan) -> None:
        paths = self._paths(plan)
        for layer in plan.template_layers:
            if not layer.is_dir():
                raise HutchError(ErrorCode.template_not_ready, f"template layer missing: {layer}")
        if not paths.upper.is_dir():
            self._mount_disk(plan)
        paths.rootfs.mkdir(exist_ok=True)
        paths.lower.mkdir(mode=0o711, exist_ok=True)
        lowers = []
        with mounts.UserNamespace(plan.uid_base) as userns:
            for i, layer in enumerate(plan.template_layers):
                target = paths.lower / str(i)
                target.mkdir(exist_ok=True)
                mounts.idmapped_bind(layer, target, userns.fd)
                lowers.append(target)
        mounts.mount_overlay(lowers, paths.upper, paths.work, paths.rootfs)
        tmp = paths.rootfs / "tmp"
        if not tmp.is_dir():  # bind-mounted over by the bundle, so it has to exist
            tmp.mkdir()
            os.chown(tmp, plan.uid_base, plan.uid_base)
            os.chmod(tmp, 0o1777)
        # The gofer runs as the sandbox's root (host uid uid_base) in a user namespace and
        # cannot walk into the runner's 0700 state dir: it gets the rootfs at a reachable path.
        paths.exposed.mkdir(mode=0o711, exist_ok=True)
        paths.exposed_rootfs.mkdir(exist_ok=True)
        mounts.bind(paths.rootfs, paths.exposed_rootfs)

    async def destroy(self, plan: SandboxPlan) -> None:
        """Kill, unmount, remove cgroups and runsc state. Idempotent; works after a crash."""
        t0 = time.monotonic()
        # `runsc delete --force` would do the same (kill sandbox and gofer, rmdir cgroups, drop
        # state files) but then polls the dead sandbox for over a second; the sweep below
        # removes the same pieces directly and verifies nothing is left.
        self._preload_in.pop(plan.sandbox_id, None)
        # Their waiters resolve (runsc exec ends with the sandbox) and close their PTY copies.
        for tracked in self._procs.pop(plan.sandbox_id, {}).values():
            if tracked.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    tracked.proc.kill()
        left = await asyncio.to_thread(self._sweep, plan)
        if not left.empty():
            log.error("gvisor.destroy_incomplete", sandbox_id=plan.sandbox_id, left=str(left))
            raise HutchError(ErrorCode.internal, f"gvisor sandbox not fully removed: {left}")
        log.info("gvisor.destroyed", sandbox_id=plan.sandbox_id, ms=_ms(t0))

    def _sweep(self, plan: SandboxPlan) -> cleanup.Leftovers:
        """Remove whatever runsc did not: processes, cgroups, mounts, our directories."""
        paths = self._paths(plan)
        parent = self.options.cgroup_parent
        deadline = time.monotonic() + DESTROY_TIMEOUT_S
        while True:
            cleanup.kill_processes(plan, self.options)
            cgroups.kill_members(plan.sandbox_id, parent)
            gone = not cleanup.sandbox_processes(plan, self.options)
            cg_left = cgroups.remove(plan.sandbox_id, parent)
            if (gone and not cg_left) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for root in paths.mount_roots():
            mounts.unmount_all(root)
        if not mounts.mounts_under(paths.disk):
            paths.disk_image.unlink(missing_ok=True)
        if not any(mounts.mounts_under(root) for root in paths.mount_roots()):
            # Only once nothing is mounted: never recurse into a live mount of the template.
            for d in paths.owned_dirs():
                if d.is_dir() and not d.is_symlink():
                    shutil.rmtree(d, ignore_errors=True)
        return self.leftovers(plan)

    async def is_alive(self, plan: SandboxPlan) -> bool:
        """`runsc state` says running."""
        st = await self._runsc(plan).state(plan.sandbox_id)
        return st is not None and st.get("status") == "running"

    # --- processes ---

    async def spawn(
        self, plan: SandboxPlan, req: ExecRequest, stdio: ProcessStdio
    ) -> tuple[SpawnedProcess, ExitWaiter]:
        """`runsc exec` with the caller's fds (or a new PTY); the waiter yields its status."""
        spec = bundle.process_spec(
            plan, req, terminal=stdio.pty is not None, preload=self._sandbox_has_preload(plan)
        )
        tracked = await process.spawn(self._runsc(plan), plan.sandbox_id, spec, stdio)
        table = self._procs.setdefault(plan.sandbox_id, {})
        table[tracked.pid] = tracked
        assert tracked.done is not None
        tracked.done.add_done_callback(lambda _t: self._forget(plan.sandbox_id, tracked))
        return process.spawned(tracked), process.RunscExitWaiter(tracked)

    def _sandbox_has_preload(self, plan: SandboxPlan) -> bool:
        """Whether the sandbox was made with the statx library mounted (read back from its
        bundle, so it also holds for sandboxes adopted after a runner restart)."""
        known = self._preload_in.get(plan.sandbox_id)
        if known is None:
            known = bundle.has_preload_mount(self._paths(plan).bundle)
            self._preload_in[plan.sandbox_id] = known
        return known

    def _forget(self, sandbox_id: str, tracked: process.Tracked) -> None:
        table = self._procs.get(sandbox_id)
        if table is not None and table.get(tracked.pid) is tracked:
            del table[tracked.pid]
            if not table:
                del self._procs[sandbox_id]

    def _tracked(self, plan: SandboxPlan, pid: int) -> process.Tracked:
        tracked = self._procs.get(plan.sandbox_id, {}).get(pid)
        if tracked is None:
            raise HutchError(ErrorCode.process_not_found, f"no running process {pid}")
        return tracked

    async def signal(self, plan: SandboxPlan, pid: int, sig: int) -> None:
        """Signal the process's group (and the process itself via runsc)."""
        await process.signal_group(
            self._runsc(plan), plan.sandbox_id, self._tracked(plan, pid), sig
        )

    async def resize(self, plan: SandboxPlan, pid: int, size: PtySize) -> None:
        """TIOCSWINSZ on the PTY, then SIGWINCH to the terminal's session."""
        await process.resize(self._runsc(plan), plan.sandbox_id, self._tracked(plan, pid), size)

    async def connect_port(self, plan: SandboxPlan, port: int) -> socket.socket:
        """Not offered: gVisor runs the sandbox's network stack inside its own kernel
        (`--network=none`), so the sandbox's loopback is not a host network namespace a
        runner thread could join, and this runsc has no port-forward command."""
        raise HutchError(
            ErrorCode.ports_unsupported,
            "the gvisor isolation class cannot expose sandbox ports: its loopback lives inside "
            "gVisor's own network stack; use the namespace class to serve ports",
        )

    async def stats(self, plan: SandboxPlan) -> SandboxStats:
        """CPU and memory as the host charges them; process count from the sandbox's kernel."""
        use = await asyncio.to_thread(cgroups.usage, plan.sandbox_id, self.options.cgroup_parent)
        pids = use.pids
        with contextlib.suppress(RunscError, ValueError):
            data = await self._runsc(plan).stats(plan.sandbox_id)
            current = data.get("pids", {})
            if isinstance(current, dict) and isinstance(current.get("current"), int):
                pids = current["current"]
        st = os.statvfs(self._paths(plan).disk)
        disk = (st.f_blocks - st.f_bfree) * st.f_frsize
        return SandboxStats(
            sandbox_id=plan.sandbox_id,
            cpu_time_us=use.cpu_time_us,
            memory_bytes=use.memory_bytes,
            memory_peak_bytes=max(use.memory_peak_bytes, use.memory_bytes),
            memory_limit_bytes=plan.memory_mb * 1024 * 1024,
            disk_used_bytes=disk,
            disk_limit_bytes=st.f_blocks * st.f_frsize,
            pids=pids,
            pids_limit=PIDS_LIMIT,
        )


def _publish(lib: Path, directory: Path) -> Path:
    """A world-readable copy of `lib` in `directory` (reachable by runsc's file proxy)."""
    directory.mkdir(mode=0o755, exist_ok=True)
    target = directory / lib.name
    if not target.is_file():
        tmp = directory / f".{lib.name}.{os.getpid()}"
        shutil.copyfile(lib, tmp)
        tmp.chmod(0o644)
        os.replace(tmp, target)
    return target


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
