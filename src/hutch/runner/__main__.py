"""`python -m hutch.runner --data-dir DIR`: the privileged runner daemon."""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys
from pathlib import Path

import structlog
import uvicorn

from hutch.config import RunnerSettings
from hutch.logs import configure_logging
from hutch.models import IsolationClass
from hutch.runner.app import create_app
from hutch.runner.manager import SandboxManager
from hutch.runtime.base import Runtime
from hutch.runtime.namespace.cgroups import favor_dynamic_modifications
from hutch.runtime.namespace.runtime import NamespaceRuntime
from hutch.runtime.templates import TemplateStore

PR_SET_CHILD_SUBREAPER = 36


def build_runtimes(settings: RunnerSettings) -> dict[IsolationClass, Runtime]:
    """Every isolation class this runner offers (unavailable ones report why)."""
    runtimes: dict[IsolationClass, Runtime] = {
        IsolationClass.namespace: NamespaceRuntime(
            settings.data_dir / "runtime", cgroup_parent=settings.cgroup_parent()
        ),
    }
    try:
        from hutch.runtime.gvisor import GVisorRuntime, RunscOptions
    except ImportError:
        pass
    else:
        runtimes[IsolationClass.gvisor] = GVisorRuntime(
            settings.data_dir / "gvisor",
            options=RunscOptions(cgroup_parent=settings.cgroup_parent()),
        )
    return runtimes


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve the runner protocol on its unix socket."""
    ap = argparse.ArgumentParser(prog="hutch-runner", description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--socket", type=Path, default=None)
    args = ap.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir.resolve()
    if args.socket is not None:
        overrides["socket"] = args.socket
    settings = RunnerSettings(**overrides)  # type: ignore[arg-type]
    if os.geteuid() != 0:
        sys.exit("hutch runner: must run as root (it is the only privileged Hutch process)")
    try:  # the API's level (`hutch serve` starts us with its environment)
        configure_logging(os.environ.get("HUTCH_LOG_LEVEL", "info"))
    except ValueError as e:
        sys.exit(f"hutch runner: HUTCH_LOG_LEVEL: {e}")
    if settings.cgroup_favor_dynmods:
        try:
            favor_dynamic_modifications()
        except OSError as e:  # an older kernel: creates still work, each waits a little longer
            structlog.get_logger("hutch.runner").info(
                "cgroup_favordynmods_unavailable", error=str(e)
            )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    # Sandbox inits are re-parented to us when their launcher exits, so we can reap them.
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    manager = SandboxManager(
        settings, build_runtimes(settings), TemplateStore(settings.templates_path())
    )
    path = settings.socket_path()
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)  # root and the hutch group only; never world-reachable
    config = uvicorn.Config(
        create_app(manager, own_process=True),
        fd=sock.fileno(),
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws_max_size=16 * 1024 * 1024,
        # The sandbox control protocol passes file descriptors over SEQPACKET sockets and the
        # launcher is reaped with pidfds; both are written against the stdlib event loop.
        loop="asyncio",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
