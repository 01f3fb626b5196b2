"""Adjusting a freshly bootstrapped Debian root file system into a sandbox layer, and checking it.

Files are edited directly rather than through tools run in a chroot, so the result does not
depend on the host and is the same from one build to the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hutch.runtime.templates.recipe import TemplateBuildError

HOSTS = """\
127.0.0.1\tlocalhost
127.0.1.1\tsandbox
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""
RESOLV_CONF = "# Filled in when the sandbox's network is set up.\n"
HOSTNAME = "sandbox\n"

# Installed into the layer so later `apt-get install` inside a sandbox stays small too.
DPKG_SLIM = """\
# Keep sandboxes small: no manual pages, info pages or translations. Copyright files stay.
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
"""


def inside(rootfs: Path, rel: str) -> Path:
    """A path below `rootfs`, refusing anything that would leave it."""
    p = rootfs / rel.lstrip("/")
    if ".." in Path(rel).parts:
        raise ValueError(f"path {rel!r} must not contain '..'")
    return p


def write_file(
    rootfs: Path, rel: str, content: str, mode: int = 0o644, mtime: int | None = None
) -> None:
    """Replace a file in the layer; a symlink in its place is replaced, never followed."""
    p = inside(rootfs, rel)
    if p.is_symlink() or p.exists():
        p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(p, mode)
    if mtime is not None:
        os.utime(p, (mtime, mtime), follow_symlinks=False)


def _append_line(path: Path, line: str) -> None:
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + line + "\n")


def _names_and_ids(path: Path) -> Iterable[tuple[str, str]]:
    if not path.exists():
        return
    for raw in path.read_text().splitlines():
        fields = raw.split(":")
        if len(fields) >= 3:
            yield fields[0], fields[2]


def add_user(
    rootfs: Path, name: str, uid: int, home: str, shell: str = "/bin/bash", epoch: int = 0
) -> None:
    """Add a user with a same-named primary group (gid = uid) and a home from /etc/skel."""
    etc = inside(rootfs, "etc")
    for db in ("passwd", "group"):
        for existing, ident in _names_and_ids(etc / db):
            if existing == name or ident == str(uid):
                raise TemplateBuildError(
                    f"cannot add user {name}: /etc/{db} already has {existing} ({ident})"
                )
    _append_line(etc / "passwd", f"{name}:x:{uid}:{uid}::{home}:{shell}")
    _append_line(etc / "group", f"{name}:x:{uid}:")
    # No password: nobody logs in; the runner starts processes as this user directly.
    if (etc / "shadow").exists():
        _append_line(etc / "shadow", f"{name}:*:{epoch // 86400}:0:99999:7:::")
    if (etc / "gshadow").exists():
        _append_line(etc / "gshadow", f"{name}:!::")
    home_dir = inside(rootfs, home)
    skel = etc / "skel"
    if skel.is_dir():
        shutil.copytree(skel, home_dir, symlinks=True, dirs_exist_ok=True)
    else:
        home_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(home_dir, 0o755)
    for dirpath, dirnames, filenames in os.walk(home_dir):
        for n in [*dirnames, *filenames, "."]:
            os.lchown(os.path.join(dirpath, n), uid, uid)


def clear_dir(d: Path, keep: Sequence[str] = ()) -> None:
    if not d.is_dir() or d.is_symlink():
        return
    for entry in d.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def clean_package_caches(rootfs: Path) -> None:
    """Drop downloaded packages, apt's index files and dpkg's backups (apt-get update refills)."""
    cache = inside(rootfs, "var/cache/apt")
    for f in cache.glob("*.bin"):
        f.unlink()
    clear_dir(cache / "archives", keep=("partial",))
    clear_dir(cache / "archives" / "partial")
    lists = inside(rootfs, "var/lib/apt/lists")
    clear_dir(lists, keep=("partial", "auxfiles"))
    clear_dir(lists / "partial")
    clear_dir(lists / "auxfiles")
    for f in inside(rootfs, "var/lib/dpkg").glob("*-old"):
        f.unlink()
    for f in inside(rootfs, "var/cache/debconf").glob("*-old"):
        f.unlink()
    inside(rootfs, "var/cache/ldconfig/aux-cache").unlink(missing_ok=True)


def clean_logs(rootfs: Path) -> None:
    """Empty /var/log of the build's own logs, keeping the directories packages expect."""
    for dirpath, _dirs, files in os.walk(inside(rootfs, "var/log")):
        for n in files:
            os.unlink(os.path.join(dirpath, n))


def slim(rootfs: Path) -> None:
    """Remove manuals, info pages and translations; keep copyright files."""
    for rel in ("usr/share/man", "usr/share/info"):
        clear_dir(inside(rootfs, rel))
    clear_dir(inside(rootfs, "usr/share/locale"), keep=("locale.alias",))
    doc = inside(rootfs, "usr/share/doc")
    if doc.is_dir():
        for pkg in doc.iterdir():
            if pkg.is_dir() and not pkg.is_symlink():
                clear_dir(pkg, keep=("copyright",))
    write_file(rootfs, "etc/dpkg/dpkg.cfg.d/hutch-slim", DPKG_SLIM)


def installed_packages(rootfs: Path) -> list[str]:
    """Installed packages as sorted "name=version" strings, read from dpkg's status file."""
    status = inside(rootfs, "var/lib/dpkg/status")
    out: list[str] = []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and line[0] not in " \t" and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out.append(f"{fields['Package']}={fields.get('Version', '')}")
    return sorted(out)


def chroot_run(
    rootfs: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    userspec: str | None = None,
    timeout: float = 120,
) -> str:
    """Run a command in the layer with chroot(8); return stdout, raise on failure."""
    cmd = ["chroot"]
    if userspec:
        cmd.append(f"--userspec={userspec}")
    cmd += [str(rootfs), *argv]
    try:
        res = subprocess.run(
            cmd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise TemplateBuildError(f"check `{' '.join(argv)}` timed out after {timeout}s") from e
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise TemplateBuildError(
            f"check `{' '.join(argv)}` failed in the new layer (exit {res.returncode}): "
            + " | ".join(why)
        )
    return res.stdout
