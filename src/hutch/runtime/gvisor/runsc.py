"""Thin async wrapper around the `runsc` command line (flags checked against runsc 20221219).

Every sandbox gets its own runsc state root (`STATE_DIR/runsc`), so all of runsc's files for
one sandbox live in one directory and its host processes carry `--root=<that dir>` in their
command line, which is how leftovers are found after a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Errors runsc prints name the user's command; cut that part out before the text goes anywhere.
_CMD_IN_MSG = re.compile(r'executing command ".*?" in sandbox: ', re.S)


@dataclass(frozen=True)
class RunscOptions:
    """How runsc is invoked on this host."""

    binary: Path = Path("/usr/bin/runsc")
    platform: str = "ptrace"  # kvm needs /dev/kvm with working nested virtualisation
    network: str = "none"  # loopback only; egress policy plugs in via a prepared netns later
    cgroup_parent: str = "hutch"  # sandboxes live in <hierarchy>/<parent>/<sandbox id>
    # runsc's file proxy runs as the sandbox's unprivileged uid and must be able to walk to
    # the rootfs and to the files bound into the sandbox; the runner's data dir is 0700, so
    # they are exposed (bind mounts, a copy of the compat library) beneath this 0711 dir.
    expose_dir: Path = Path("/run/hutch-gvisor")


class RunscError(Exception):
    """A runsc command failed; `message` is runsc's own error text (command names removed)."""

    def __init__(self, what: str, returncode: int, message: str) -> None:
        super().__init__(f"runsc {what} failed ({returncode}): {message}")
        self.what = what
        self.returncode = returncode
        self.message = message


def clean_message(raw: str) -> str:
    """runsc's error text without the user's command line; JSON log lines are unwrapped."""
    lines = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        if isinstance(obj, dict) and obj.get("level") in ("error", "fatal", "warning"):
            lines.append(str(obj.get("msg", "")))
    return _CMD_IN_MSG.sub("", "; ".join(lines))[:2000]


class Runsc:
    """runsc for one sandbox state root."""

    def __init__(self, opts: RunscOptions, root: Path) -> None:
        self.opts = opts
        self.root = root

    def global_args(self) -> list[str]:
        """Flags every subcommand must get: runsc re-reads its configuration on each call."""
        return [
            str(self.opts.binary),
            f"--root={self.root}",
            f"--platform={self.opts.platform}",
            f"--network={self.opts.network}",
            # Writes must reach the host overlay (the files API reads it); never keep them in
            # runsc's own in-memory overlay, whatever a newer runsc's default is.
            "--overlay2=none",
            # The runner's files API changes the rootfs from the host while the sandbox runs;
            # "exclusive" (the default) lets the sandbox's kernel cache listings and go stale.
            "--file-access=shared",
        ]

    async def run(
        self, what: str, *args: str, timeout: float = 30.0, detached_io: bool = False
    ) -> str:
        """Run a subcommand with no stdin; return stdout, raise RunscError with its errors.

        `detached_io`: the command starts the sandbox, whose init inherits runsc's stdio; give
        it /dev/null so nothing keeps our pipes open for the sandbox's lifetime."""
        # runsc writes its own errors to the log fd when one is given; keep them apart from
        # stdout (which `state`/`events` answer on).
        rfd, wfd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.global_args()[:1],
                f"--log-fd={wfd}",
                *self.global_args()[1:],
                what,
                *args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if detached_io else subprocess.PIPE,
                stderr=subprocess.DEVNULL if detached_io else subprocess.PIPE,
                pass_fds=(wfd,),
                start_new_session=True,
            )
            os.close(wfd)
            wfd = -1
            try:
                out, err = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise RunscError(what, -9, f"timed out after {timeout:.0f}s") from None
            log = read_available(rfd)
        finally:
            if wfd >= 0:
                os.close(wfd)
            os.close(rfd)
        out, err = out or b"", err or b""
        if proc.returncode != 0:
            msg = clean_message(log) or clean_message(err.decode(errors="replace"))
            raise RunscError(what, proc.returncode or -1, msg or "no error text")
        return out.decode(errors="replace")

    async def state(self, container_id: str) -> dict[str, object] | None:
        """`runsc state`, or None when runsc does not know the container."""
        if not self.root.is_dir():
            return None
        try:
            out = await self.run("state", container_id, timeout=10)
        except RunscError:
            return None
        parsed = json.loads(out)
        return parsed if isinstance(parsed, dict) else None

    async def stats(self, container_id: str) -> dict[str, object]:
        """`runsc events --stats`: usage as the sandbox's own kernel counts it."""
        out = await self.run("events", "--stats", container_id, timeout=10)
        parsed = json.loads(out.splitlines()[0]) if out.strip() else {}
        data = parsed.get("data", {}) if isinstance(parsed, dict) else {}
        return data if isinstance(data, dict) else {}


def read_available(fd: int) -> str:
    """Everything readable from `fd` right now, without blocking."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def version(binary: Path) -> str:
    """runsc's version string, e.g. `0.0~20221219.0`; raises OSError/CalledProcessError."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, check=True, timeout=10, text=True
    ).stdout
    m = re.search(r"runsc version (\S+)", out)
    return m.group(1) if m else out.strip().splitlines()[0] if out.strip() else "unknown"


def self_check(opts: RunscOptions, timeout: float = 20.0) -> str | None:
    """Run `true` in a throw-away sandbox with our platform and network; None when it works,
    otherwise runsc's reason."""
    with tempfile.TemporaryDirectory(prefix="hutch-runsc-check-") as tmp:
        runsc = Runsc(opts, Path(tmp) / "root")
        # `do` brings its own root (the host's, read-only under a tmpfs overlay) and refuses
        # the file-access/overlay flags of real sandboxes; platform and network are what
        # this check is about.
        args = [*runsc.global_args()[:4], "do", "--quiet", "true"]
        try:
            res = subprocess.run(
                args, capture_output=True, timeout=timeout, cwd=tmp, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"runsc self-check could not run: {e}"
        if res.returncode != 0:
            text = clean_message(res.stderr.decode(errors="replace") + res.stdout.decode())
            return f"runsc self-check failed ({res.returncode}): {text or 'no error text'}"
    return None
