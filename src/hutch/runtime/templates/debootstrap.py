"""Running debootstrap: choosing the mirror, turning its output into progress, cleaning up.

debootstrap prints human-readable `I:` lines without totals, so fractions come from counting
lines against totals seen in the previous build (kept in the recipe's cache); on a first build
the download and extract phases have no known total and report `None`.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog

from hutch.runtime.templates.recipe import (
    PHASE_DOWNLOAD,
    PHASE_EXTRACT,
    PHASE_INDICES,
    PHASE_INSTALL,
    ProgressCallback,
    TemplateBuildError,
)

log = structlog.get_logger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# A clean environment: nothing of the caller's (tokens, settings) reaches maintainer scripts.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PKG_LINE = re.compile(r"^(Retrieving|Validating) (\S+) (\S+)$")
_EXTRACT_LINE = re.compile(r"^Extracting (\S+?)\.\.\.$")
_DPKG_LINE = re.compile(r"^(Unpacking|Configuring) (\S+?)\.\.\.$")
_STAGE_LINES = {
    "Unpacking required packages...",
    "Configuring required packages...",
    "Unpacking the base system...",
    "Configuring the base system...",
}
_DONE_LINE = "Base system installed successfully."
_ALMOST = 0.99  # a counted phase never claims to be complete before debootstrap says so


def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif raw[0] in " \t" and key:
            stanza[key] += " " + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def _from_deb822(text: str, suite: str) -> str | None:
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in st.get("types", "").split() or suite not in st.get("suites", "").split():
            continue
        for uri in st.get("uris", "").split():
            if uri.startswith(("http://", "https://")):
                return uri.rstrip("/")
    return None


def _from_one_line(text: str, suite: str) -> str | None:
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == suite and words[0].startswith(("http://", "https://")):
            return words[0].rstrip("/")
    return None


def find_mirror(suite: str, etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for `suite`, else deb.debian.org."""
    sources_d = etc_apt / "sources.list.d"
    if sources_d.is_dir():
        for f in sorted(sources_d.glob("*.sources")):
            if found := _from_deb822(f.read_text(errors="replace"), suite):
                return found
        for f in sorted(sources_d.glob("*.list")):
            if found := _from_one_line(f.read_text(errors="replace"), suite):
                return found
    main = etc_apt / "sources.list"
    if main.is_file() and (found := _from_one_line(main.read_text(errors="replace"), suite)):
        return found
    return DEFAULT_MIRROR


class DebootstrapProgress:
    """Turns debootstrap's `I:` lines into progress reports and counts what it saw."""

    def __init__(self, progress: ProgressCallback, expected: Mapping[str, int] | None = None):
        self._progress = progress
        self._expected = dict(expected or {})
        self._phase = ""
        self._downloaded: set[str] = set()
        self._extracted = 0
        self._install_steps = 0
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.done = False

    @property
    def counts(self) -> dict[str, int]:
        """Items seen per counted phase; the next build uses them as totals."""
        return {PHASE_DOWNLOAD: len(self._downloaded), PHASE_EXTRACT: self._extracted}

    def _report(self, phase: str, done: int, total: int | None, message: str) -> None:
        self._phase = phase
        fraction = None if not total else min(done / total, _ALMOST)
        self._progress(phase, fraction, message)

    def feed(self, line: str) -> None:
        """Handle one line of debootstrap's output."""
        line = line.rstrip("\n")
        if line.startswith("E: "):
            self.errors.append(line[3:])
            return
        if line.startswith("W: "):
            self.warnings.append(line[3:])
            return
        if not line.startswith("I: "):
            return
        text = line[3:].strip()
        if m := _PKG_LINE.match(text):
            verb, pkg, ver = m.groups()
            if verb == "Validating":
                self._downloaded.add(pkg)
            total = self._expected.get(PHASE_DOWNLOAD)
            self._report(PHASE_DOWNLOAD, len(self._downloaded), total, f"{verb} {pkg} {ver}")
        elif m := _EXTRACT_LINE.match(text):
            self._extracted += 1
            total = self._expected.get(PHASE_EXTRACT)
            self._report(PHASE_EXTRACT, self._extracted, total, f"Extracting {m.group(1)}")
        elif text.startswith("Chosen extractor"):
            self._report(PHASE_EXTRACT, 0, self._expected.get(PHASE_EXTRACT), text)
        elif text == "Installing core packages..." or text in _STAGE_LINES:
            self._report(PHASE_INSTALL, self._install_steps, self._install_total(), text)
        elif m := _DPKG_LINE.match(text):
            # every package is unpacked once and configured once: two steps each
            self._install_steps += 1
            verb, pkg = m.groups()
            self._report(PHASE_INSTALL, self._install_steps, self._install_total(), f"{verb} {pkg}")
        elif text == _DONE_LINE:
            self.done = True
            self._phase = PHASE_INSTALL
            self._progress(PHASE_INSTALL, 1.0, text)
        elif self._phase in ("", PHASE_INDICES):
            self._report(PHASE_INDICES, 0, None, text)
        else:
            self._progress(self._phase, None, text)

    def _install_total(self) -> int | None:
        packages = len(self._downloaded) or self._expected.get(PHASE_DOWNLOAD, 0)
        return 2 * packages or None


def debootstrap_command(
    *,
    target: Path,
    suite: str,
    mirror: str,
    variant: str,
    packages: list[str],
    cache_dir: Path,
) -> list[str]:
    """The command line: debootstrap in its own mount and pid namespaces.

    Whatever it mounts inside the target (/proc, /sys, maybe /dev) vanishes with the
    namespace, and if this process dies the whole tree of children is killed (pdeathsig on
    unshare, --kill-child on the namespace's init), so an interrupted build leaves no mounts
    and no stray processes.
    """
    return [
        "setpriv",
        "--pdeathsig",
        "KILL",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--kill-child=KILL",
        "debootstrap",
        f"--variant={variant}",
        f"--keyring={KEYRING}",
        f"--cache-dir={cache_dir}",
        "--components=main",
        f"--include={','.join(packages)}",
        suite,
        str(target),
        mirror,
    ]


def check_tools() -> None:
    """Fail early, with what to install, if building is impossible on this host."""
    if os.geteuid() != 0:
        raise TemplateBuildError("building a template needs root (debootstrap and chroot)")
    missing = [t for t in ("debootstrap", "unshare", "setpriv", "chroot") if not shutil.which(t)]
    if missing:
        raise TemplateBuildError(
            f"cannot build templates: {', '.join(missing)} not found; "
            "install them with `apt-get install debootstrap util-linux coreutils`"
        )
    if not KEYRING.is_file():
        raise TemplateBuildError(
            f"cannot verify Debian's archive: {KEYRING} is missing; "
            "install it with `apt-get install debian-archive-keyring`"
        )


def run_debootstrap(
    cmd: list[str],
    target: Path,
    parser: DebootstrapProgress,
    env: Mapping[str, str],
    timeout_s: float = 3600.0,
) -> None:
    """Run debootstrap, feeding its output to `parser`; raise with its last words on failure.

    A stuck mirror must not hold the build lock forever, so the run is killed after
    `timeout_s` seconds.
    """
    tail: collections.deque[str] = collections.deque(maxlen=20)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        text=True,
        errors="replace",
        bufsize=1,
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    watchdog = threading.Timer(timeout_s, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            parser.feed(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        watchdog.cancel()
    if expired.is_set():
        raise TemplateBuildError(f"debootstrap did not finish within {timeout_s:.0f} s")
    if rc != 0 or not parser.done:
        logfile = target / "debootstrap" / "debootstrap.log"
        detail = "; ".join(parser.errors) or "; ".join(list(tail)[-5:])
        log_tail = ""
        if logfile.is_file():
            lines = logfile.read_text(errors="replace").splitlines()
            log_tail = "\n".join(lines[-15:])
        log.error("debootstrap failed", exit_code=rc, log_tail=log_tail)
        raise TemplateBuildError(f"debootstrap failed (exit code {rc}): {detail}")
