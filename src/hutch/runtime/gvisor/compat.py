"""Work-arounds for gaps of the runsc release we run on (Debian's 20221219).

That release answers `statx(..., AT_NO_AUTOMOUNT, ...)` with EINVAL. Debian bookworm's coreutils
passes that flag, so `ls`, `stat`, `du`, `cp -a` ... fail inside the sandbox with "Invalid
argument". The flag means nothing under gVisor (it has no automounts), so a tiny preloaded
library drops it before the call reaches the sandbox's kernel. The library is built here with
the host's C compiler (setup.sh installs gcc) and bind-mounted read-only at `PRELOAD_PATH`
inside the sandbox's in-memory /dev, so nothing of it lands in the sandbox's disk layer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PRELOAD_PATH = "/dev/hutch-statx-compat.so"

STATX_SHIM_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Same contract as glibc's statx(): -1 and errno on failure. */
int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
"""


def build_statx_shim(cache_dir: Path) -> Path:
    """Compile the shim once into `cache_dir` (named by its source hash); return its path.

    Raises OSError with a reason when it cannot be built (no compiler, unwritable dir)."""
    digest = hashlib.sha256(STATX_SHIM_C.encode()).hexdigest()[:16]
    target = cache_dir / f"statx-compat-{digest}.so"
    if target.is_file():
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc/gcc) to build the statx compatibility library")
    # The gofer serves the file from the sandbox's unprivileged uid: keep it world-readable.
    cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        src = Path(tmp) / "statx.c"
        src.write_text(STATX_SHIM_C)
        out = Path(tmp) / "statx.so"
        res = subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0:
            raise OSError(f"building the statx compatibility library failed: {res.stderr[:500]}")
        out.chmod(0o644)
        os.replace(out, target)
    return target
