"""OCI documents for runsc: the sandbox's config.json and the process.json of each exec."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hutch.models import ExecRequest, ExecUser
from hutch.models.common import SANDBOX_USER_HOME, SANDBOX_USER_UID
from hutch.runtime.base import SandboxPlan
from hutch.runtime.gvisor.compat import PRELOAD_PATH
from hutch.runtime.gvisor.mounts import UID_RANGE

CGROUP_PARENT = "hutch"
CPU_PERIOD_US = 100_000
PIDS_LIMIT = 4096
NOFILE_LIMIT = 65536
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Init only has to outlive every exec and reap orphans (gVisor re-parents them to pid 1); a
# shell loop does both without needing anything beyond /bin/sh in the template. TERM is
# trapped so a stray `kill 1` inside does not end the sandbox.
INIT_ARGV = ["/bin/sh", "-c", "trap : TERM INT HUP; while :; do sleep 3600 & wait; done"]

# What root gets inside (the usual container default minus NET_RAW; gVisor emulates these in
# its own kernel, none reaches the host).
ROOT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
]


def cgroups_path(sandbox_id: str, parent: str = CGROUP_PARENT) -> str:
    """The cgroup (relative to each hierarchy's root) runsc puts the sandbox in."""
    return f"/{parent}/{sandbox_id}"


def _caps(root: bool) -> dict[str, list[str]]:
    held = ROOT_CAPS if root else []
    return {
        "bounding": ROOT_CAPS,
        "effective": held,
        "permitted": held,
        "inheritable": [],
        "ambient": [],
    }


def _rlimits() -> list[dict[str, Any]]:
    return [
        {"type": "RLIMIT_NOFILE", "soft": NOFILE_LIMIT, "hard": NOFILE_LIMIT},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]


def _env_list(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


def sandbox_config(
    plan: SandboxPlan,
    rootfs: Path,
    netns: Path | None = None,
    preload: Path | None = None,
    cgroup_parent: str = CGROUP_PARENT,
) -> dict[str, Any]:
    """config.json for the sandbox: init process, limits, namespaces, id mapping.

    `rootfs`: the sandbox's `/` at a path runsc's unprivileged file proxy can reach.
    `preload`: host path of the statx compatibility library (see compat.py), if built."""
    memory = plan.memory_mb * 1024 * 1024
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "user"},
        # Network seam: with a path, runsc joins a namespace prepared by the network policy
        # code; without one (today) it gets a fresh one and `--network=none` gives loopback only.
        {"type": "network", **({"path": str(netns)} if netns else {})},
    ]
    id_map = [{"containerID": 0, "hostID": plan.uid_base, "size": UID_RANGE}]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": INIT_ARGV,
            "env": _env_list(
                _with_preload({"PATH": DEFAULT_PATH, **plan.env, "HOME": "/root"}, preload)
            ),
            "cwd": "/",
            "capabilities": _caps(root=True),
            "rlimits": _rlimits(),
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": plan.sandbox_id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            # runsc puts a private tmpfs on an empty /tmp unless the spec mounts something
            # there; bind the rootfs's own /tmp so files there stay visible to the files API.
            {
                "destination": "/tmp",
                "type": "bind",
                "source": str(rootfs / "tmp"),
                "options": ["rbind", "rw", "nosuid", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            *(
                [
                    {
                        "destination": PRELOAD_PATH,
                        "type": "bind",
                        "source": str(preload),
                        "options": ["rbind", "ro", "nosuid", "nodev"],
                    }
                ]
                if preload
                else []
            ),
        ],
        "linux": {
            "namespaces": namespaces,
            "uidMappings": id_map,
            "gidMappings": id_map,
            "cgroupsPath": cgroups_path(plan.sandbox_id, cgroup_parent),
            "resources": {
                "cpu": {"quota": plan.vcpu * CPU_PERIOD_US, "period": CPU_PERIOD_US},
                # memsw equal to memory: the sandbox gets no swap.
                "memory": {"limit": memory, "swap": memory},
                "pids": {"limit": PIDS_LIMIT},
            },
        },
    }


def write_config(bundle_dir: Path, config: dict[str, Any]) -> Path:
    """Write config.json (0600: it holds the sandbox's environment) into `bundle_dir`."""
    bundle_dir.mkdir(mode=0o700, exist_ok=True)
    path = bundle_dir / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    return path


def has_preload_mount(bundle_dir: Path) -> bool:
    """Whether the sandbox's config.json mounts the statx compatibility library."""
    try:
        config = json.loads((bundle_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(m.get("destination") == PRELOAD_PATH for m in config.get("mounts", []))


def exec_identity(user: ExecUser) -> tuple[int, str]:
    """(uid, home) inside the sandbox for an exec user."""
    if user == ExecUser.root:
        return 0, "/root"
    return SANDBOX_USER_UID, SANDBOX_USER_HOME


def _with_preload(env: dict[str, str], preload: Path | bool | None) -> dict[str, str]:
    if not preload:
        return env
    theirs = env.get("LD_PRELOAD")
    return {**env, "LD_PRELOAD": f"{PRELOAD_PATH}:{theirs}" if theirs else PRELOAD_PATH}


def process_spec(
    plan: SandboxPlan, req: ExecRequest, terminal: bool, preload: bool = False
) -> dict[str, Any]:
    """process.json for `runsc exec --process`: argv, env, cwd, identity, capabilities."""
    uid, home = exec_identity(req.user)
    base = {"PATH": DEFAULT_PATH, "HOME": home, "USER": "root" if uid == 0 else "user"}
    if terminal:
        base["TERM"] = "xterm-256color"
    env = _with_preload({**base, **plan.env, **req.env}, preload)
    return {
        "terminal": terminal,
        "user": {"uid": uid, "gid": uid, "additionalGids": [uid]},
        "args": req.argv(),
        "env": _env_list(env),
        "cwd": req.cwd or home,
        "capabilities": _caps(root=uid == 0),
        "rlimits": _rlimits(),
        "noNewPrivileges": True,
    }
