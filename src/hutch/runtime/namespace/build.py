"""Compile the sandbox launcher/init from its C source, once per source version."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from hutch.models import ErrorCode, HutchError

SOURCE = "hutch-sandbox.c"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-format-truncation", "-D_FORTIFY_SOURCE=2"]


def source_text() -> bytes:
    """The launcher's C source as shipped in the package."""
    return resources.files("hutch.runtime.namespace").joinpath("csrc", SOURCE).read_bytes()


def ensure_binary(bin_dir: Path) -> Path:
    """Return the compiled launcher for the current source, building it if needed.

    The binary's name carries a hash of source and flags, so an upgraded package never runs a
    stale launcher, and concurrent starts serialise on a lock file instead of racing gcc.
    """
    src = source_text()
    digest = hashlib.sha256(src + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = bin_dir / f"hutch-sandbox-{digest}"
    if target.exists():
        return target
    bin_dir.mkdir(parents=True, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise HutchError(
            ErrorCode.isolation_unavailable,
            "the namespace runtime needs a C compiler (gcc) and libseccomp-dev to build its "
            "launcher; run scripts/setup.sh as root",
        )
    with open(bin_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        src_path = bin_dir / f"build-{os.getpid()}-{SOURCE}"
        src_path.write_bytes(src)
        tmp = target.with_suffix(".tmp")
        try:
            proc = subprocess.run(
                [cc, *CFLAGS, "-o", str(tmp), str(src_path), "-lseccomp"],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise HutchError(
                    ErrorCode.isolation_unavailable,
                    f"building the sandbox launcher failed (is libseccomp-dev installed?): "
                    f"{proc.stderr.strip()[-800:]}",
                )
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        finally:
            src_path.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
    return target
