"""The `base` template: Debian 12 minbase with Python 3, git and curl, and a `user` account."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from importlib import resources
from pathlib import Path

import structlog

from hutch.models.common import SANDBOX_USER_HOME, SANDBOX_USER_UID
from hutch.runtime.templates import debootstrap as dbs
from hutch.runtime.templates import rootfs as rfs
from hutch.runtime.templates.recipe import (
    PHASE_CUSTOMIZE,
    PHASE_INDICES,
    PHASE_VERIFY,
    BuildContext,
    BuildResult,
    Recipe,
    TemplateBuildError,
)

log = structlog.get_logger(__name__)

SUITE = "bookworm"
VARIANT = "minbase"
# Bump when the steps in this file change what ends up in the layer.
RECIPE_VERSION = 1
# Fixed timestamp for the files this recipe writes and for tools that honour it.
SOURCE_DATE_EPOCH = 1735689600  # 2025-01-01T00:00:00Z
USER_NAME = "user"

_CHECK_ENV = {
    "PATH": dbs.SAFE_PATH,
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "PYTHONDONTWRITEBYTECODE": "1",
}
# Each must succeed in a chroot of the finished layer, as root unless a user is given.
CHECKS: list[tuple[str | None, list[str]]] = [
    (None, ["/bin/true"]),
    (None, ["/usr/bin/env", "python3", "-c", "import ssl, sqlite3, venv, ensurepip, json"]),
    (None, ["/usr/bin/env", "python3", "-m", "pip", "--version"]),
    (None, ["/bin/bash", "-lc", "true"]),
    (None, ["git", "--version"]),
    (None, ["curl", "--version"]),
    (None, ["ip", "-V"]),
    # ps and friends need /proc, which only a running sandbox has: check they are there
    (None, ["/bin/sh", "-c", "command -v ps pkill killall less vi gawk unzip file xz"]),
    (f"{SANDBOX_USER_UID}:{SANDBOX_USER_UID}", ["/bin/bash", "-lc", 'test -w "$HOME"']),
]


def recipe_text() -> bytes:
    """The committed package list of the base template."""
    return resources.files("hutch.runtime.templates").joinpath("base.txt").read_bytes()


def package_list(text: bytes | None = None) -> list[str]:
    """Package names from base.txt: one per line, `#` starts a comment."""
    raw = (text if text is not None else recipe_text()).decode()
    names = [line.split("#", 1)[0].strip() for line in raw.splitlines()]
    return [n for n in names if n]


def host_arch() -> str:
    """The Debian architecture of this host (the layer is built for it)."""
    res = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return res.stdout.strip() or "amd64"


class BaseRecipe(Recipe):
    """Builds `base` with debootstrap, then shapes it into a sandbox layer and checks it."""

    name = "base"
    description = "Debian 12 (bookworm) with Python 3, pip, venv, git and curl"

    def __init__(self, mirror: str | None = None, etc_apt: Path = Path("/etc/apt")) -> None:
        self._mirror = mirror
        self._etc_apt = etc_apt

    def fingerprint(self) -> str:
        """sha256 over the package list and the fixed choices in this module."""
        h = hashlib.sha256()
        h.update(recipe_text())
        h.update(f"\n{SUITE}\n{VARIANT}\n{RECIPE_VERSION}\n{SOURCE_DATE_EPOCH}\n".encode())
        return h.hexdigest()

    def build(self, ctx: BuildContext) -> BuildResult:
        """debootstrap, customize, verify; see the module docstring for what comes out."""
        dbs.check_tools()
        mirror = self._mirror or dbs.find_mirror(SUITE, self._etc_apt)
        arch = host_arch()
        debs = ctx.cache_dir / f"debs-{SUITE}-{arch}"
        debs.mkdir(parents=True, exist_ok=True)
        stats_file = ctx.cache_dir / "progress.json"
        expected = _read_counts(stats_file)

        ctx.progress(PHASE_INDICES, None, f"debootstrap {SUITE} from {mirror}")
        log.info("template build started", template=self.name, suite=SUITE, mirror=mirror)
        parser = dbs.DebootstrapProgress(ctx.progress, expected)
        cmd = dbs.debootstrap_command(
            target=ctx.rootfs,
            suite=SUITE,
            mirror=mirror,
            variant=VARIANT,
            packages=package_list(),
            cache_dir=debs,
        )
        env = {
            "PATH": dbs.SAFE_PATH,
            "LC_ALL": "C",
            "DEBIAN_FRONTEND": "noninteractive",
            "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        }
        for k in ("http_proxy", "https_proxy", "no_proxy"):
            if k in os.environ:
                env[k] = os.environ[k]
        dbs.run_debootstrap(cmd, ctx.rootfs, parser, env)
        stats_file.write_text(json.dumps(parser.counts))

        customize(ctx)
        verify(ctx)
        packages = rfs.installed_packages(ctx.rootfs)
        _prune_cache(debs, packages, arch)
        return BuildResult(
            packages=packages,
            details={"suite": SUITE, "variant": VARIANT, "mirror": mirror, "arch": arch},
        )


def customize(ctx: BuildContext) -> None:
    """Turn a debootstrapped tree into a sandbox layer."""
    root = ctx.rootfs
    steps = 6
    ctx.progress(PHASE_CUSTOMIZE, 0 / steps, f"adding {USER_NAME} ({SANDBOX_USER_UID})")
    rfs.add_user(root, USER_NAME, SANDBOX_USER_UID, SANDBOX_USER_HOME, epoch=SOURCE_DATE_EPOCH)
    ctx.progress(PHASE_CUSTOMIZE, 1 / steps, "writing /etc/hostname, /etc/hosts, resolv.conf")
    # debootstrap copies the host's hostname and resolv.conf; none of the host may stay.
    rfs.write_file(root, "etc/hostname", rfs.HOSTNAME, mtime=SOURCE_DATE_EPOCH)
    rfs.write_file(root, "etc/hosts", rfs.HOSTS, mtime=SOURCE_DATE_EPOCH)
    rfs.write_file(root, "etc/resolv.conf", rfs.RESOLV_CONF, mtime=SOURCE_DATE_EPOCH)
    machine_id = root / "etc/machine-id"
    if machine_id.exists():
        rfs.write_file(root, "etc/machine-id", "", 0o444, mtime=SOURCE_DATE_EPOCH)
    ctx.progress(PHASE_CUSTOMIZE, 2 / steps, "allowing pip to install packages")
    # Sandboxes are disposable, so `pip install` should just work as in other sandbox hosts;
    # the PEP 668 marker would make it refuse without --break-system-packages.
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    ctx.progress(PHASE_CUSTOMIZE, 3 / steps, "removing manuals and translations")
    rfs.slim(root)
    ctx.progress(PHASE_CUSTOMIZE, 4 / steps, "removing package caches and logs")
    rfs.clean_package_caches(root)
    rfs.clean_logs(root)
    ctx.progress(PHASE_CUSTOMIZE, 5 / steps, "setting /tmp permissions")
    for tmp in ("tmp", "var/tmp"):
        d = rfs.inside(root, tmp)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o1777)
    ctx.progress(PHASE_CUSTOMIZE, 1.0, "done")


def verify(ctx: BuildContext) -> None:
    """Run the checks in CHECKS in a chroot of the layer; any failure fails the build."""
    for i, (userspec, argv) in enumerate(CHECKS):
        ctx.progress(PHASE_VERIFY, i / len(CHECKS), " ".join(argv))
        env = dict(_CHECK_ENV)
        if userspec:
            env["HOME"] = SANDBOX_USER_HOME
        rfs.chroot_run(ctx.rootfs, argv, env, userspec=userspec)
    passwd = (ctx.rootfs / "etc/passwd").read_text()
    want = f"{USER_NAME}:x:{SANDBOX_USER_UID}:{SANDBOX_USER_UID}::{SANDBOX_USER_HOME}:/bin/bash"
    if want not in passwd.splitlines():
        raise TemplateBuildError(f"the new layer has no {USER_NAME} account")
    for d in ("tmp", "var/tmp"):
        if (ctx.rootfs / d).stat().st_mode & 0o7777 != 0o1777:
            raise TemplateBuildError(f"/{d} in the new layer is not mode 1777")
    # checks leave nothing behind in the layer
    for leftover in ("root/.cache", "root/.bash_history"):
        p = ctx.rootfs / leftover
        if p.is_dir():
            rfs.clear_dir(p)
            p.rmdir()
        elif p.exists():
            p.unlink()
    ctx.progress(PHASE_VERIFY, 1.0, "all checks passed")


def _read_counts(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and v > 0}


def _prune_cache(debs: Path, packages: list[str], arch: str) -> None:
    """Keep only the .debs this build used, so the cache does not grow with every update."""
    keep: set[str] = set()
    for p in packages:
        name, _, version = p.partition("=")
        for a in (arch, "all"):
            keep.add(f"{name}_{version}_{a}.deb".replace(":", "%3a"))
    for f in debs.glob("*.deb"):
        if f.name not in keep:
            f.unlink()
