"""The template store: read-only root file system layers under one directory, built on demand.

Layout of the store directory TDIR:

    TDIR/<name>/rootfs/         the layer (a root file system, read-only by convention)
    TDIR/<name>/template.json   TemplateManifest: layers, build time, size, packages, recipe sha256
    TDIR/.tmp-<name>-<hex>/     a build in progress, or the leftover of an interrupted one
    TDIR/.locks/<name>.lock     flock(2) held for the whole build of <name>
    TDIR/.cache/<name>/         kept between builds (downloaded packages, progress totals)

A template is built into a temporary sibling and renamed into place, so `TDIR/<name>` is either
absent or complete. The lock makes a second builder wait and then use the first one's result.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from hutch.models import ErrorCode, HutchError, TemplateInfo
from hutch.models.sandbox import TEMPLATE_NAME_RE
from hutch.runtime.templates.base import BaseRecipe
from hutch.runtime.templates.fsops import disk_usage, fsync_dir, remove_tree, rename_exchange
from hutch.runtime.templates.recipe import (
    PHASE_FINALIZE,
    PHASE_WAIT,
    BuildContext,
    ProgressCallback,
    Recipe,
    no_progress,
)

log = structlog.get_logger(__name__)

MANIFEST_FILE = "template.json"
ROOTFS_DIR = "rootfs"
TMP_PREFIX = ".tmp-"
MANIFEST_FORMAT = 1
_NAME = re.compile(TEMPLATE_NAME_RE)


class TemplateManifest(BaseModel):
    """What template.json records about a built template."""

    model_config = ConfigDict(extra="forbid")

    format: int = MANIFEST_FORMAT
    name: str
    description: str | None = None
    layers: list[str]  # template names whose rootfs dirs stack up this template, lowest first
    built_at: datetime
    build_seconds: float
    size_bytes: int
    recipe_sha256: str
    packages: list[str]
    details: dict[str, str] = {}

    def info(self) -> TemplateInfo:
        """The wire view of this template."""
        return TemplateInfo(
            name=self.name,
            ready=True,
            size_bytes=self.size_bytes,
            built_at=self.built_at,
            description=self.description,
        )


class TemplateStore:
    """Lists, resolves and builds templates in one directory. Safe to use from several
    processes at once; builds of the same template are serialised by a file lock."""

    def __init__(self, tdir: Path, recipes: Iterable[Recipe] | None = None) -> None:
        self._tdir = Path(tdir)
        chosen = list(recipes) if recipes is not None else [BaseRecipe()]
        self._recipes: dict[str, Recipe] = {r.name: r for r in chosen}
        # name → (the manifest file's identity, its parsed content): every create reads the
        # manifest, and a stat is cheaper than reading and validating it again.
        self._manifests: dict[str, tuple[tuple[int, int, int], TemplateManifest]] = {}

    @property
    def tdir(self) -> Path:
        """The store directory."""
        return self._tdir

    # ---- reading ----------------------------------------------------------------------------

    def list(self) -> builtins.list[TemplateInfo]:
        """Every buildable or built template, sorted by name; unbuilt ones have ready=False."""
        return [self._info(n) for n in self._known_names()]

    def get(self, name: str) -> TemplateInfo:
        """One template; HutchError(template_not_found) if there is no such template."""
        self._check_name(name)
        if name not in self._recipes and self.manifest(name) is None:
            raise self._not_found(name)
        return self._info(name)

    def manifest(self, name: str) -> TemplateManifest | None:
        """The manifest of a built template, or None if it is not (completely) built."""
        if not _NAME.match(name):
            return None
        tdir = self._tdir / name
        try:
            st = os.stat(tdir / MANIFEST_FILE)
        except FileNotFoundError:
            return None
        # A rebuild replaces the file (a new inode), an edit changes its time or size.
        ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._manifests.get(name)
        if cached is not None and cached[0] == ident:
            m = cached[1]
        else:
            try:
                raw = (tdir / MANIFEST_FILE).read_text()
            except FileNotFoundError:
                return None
            try:
                m = TemplateManifest.model_validate_json(raw)
            except ValidationError:
                log.warning("unreadable template manifest", template=name)
                return None
            self._manifests[name] = (ident, m)
        if m.name != name or not (tdir / ROOTFS_DIR).is_dir():
            log.warning("inconsistent template directory", template=name)
            return None
        return m

    def stale(self, name: str) -> bool:
        """Whether a built template was made from a recipe other than the current one
        (it stays usable; rebuilding it with force=True brings it up to date)."""
        m = self.manifest(name)
        recipe = self._recipes.get(name)
        return m is not None and recipe is not None and m.recipe_sha256 != recipe.fingerprint()

    def layers(self, name: str) -> tuple[Path, ...]:
        """Read-only rootfs directories of a template, lowest first, for an overlay mount."""
        self._check_name(name)
        m = self.manifest(name)
        if m is None:
            if name in self._recipes:
                raise HutchError(
                    ErrorCode.template_not_ready,
                    f"template {name!r} is not built yet on this runner; it is built on first "
                    "use, which takes a few minutes",
                )
            raise self._not_found(name)
        paths: builtins.list[Path] = []
        for layer in m.layers:
            if layer != name and self.manifest(layer) is None:
                raise HutchError(
                    ErrorCode.template_not_ready,
                    f"template {name!r} needs layer {layer!r}, which is not built",
                )
            paths.append(self._tdir / layer / ROOTFS_DIR)
        return tuple(paths)

    # ---- building ---------------------------------------------------------------------------

    def ensure(self, name: str, progress: ProgressCallback | None = None) -> TemplateInfo:
        """The template, built first if it is not yet."""
        info = self.get(name)
        if info.ready:
            return info
        return self.build(name, progress)

    def build(
        self, name: str, progress: ProgressCallback | None = None, force: bool = False
    ) -> TemplateInfo:
        """Build a template (unless built and not `force`). Another process building the same
        template is waited for. With `force` the old layer is swapped out atomically and
        deleted, so sandboxes must not be running from it."""
        self._check_name(name)
        recipe = self._recipes.get(name)
        if recipe is None:
            if self.manifest(name) is not None:
                raise HutchError(
                    ErrorCode.invalid_request,
                    f"template {name!r} has no recipe on this runner, so it cannot be rebuilt; "
                    f"buildable: {', '.join(sorted(self._recipes)) or 'none'}",
                )
            raise self._not_found(name)
        report = progress or no_progress
        for parent in recipe.parents:
            self.ensure(parent, progress)
        self._tdir.mkdir(parents=True, exist_ok=True)
        self.cleanup()
        with self._lock(name, report):
            if not force and (m := self.manifest(name)) is not None:
                report(PHASE_FINALIZE, 1.0, f"{name} is already built")
                return m.info()
            for leftover in self._leftovers(name):
                remove_tree(leftover)
            return self._build_locked(recipe, report)

    def cleanup(self) -> builtins.list[Path]:
        """Remove what interrupted builds left behind (only for templates nobody is building)."""
        removed: builtins.list[Path] = []
        if not self._tdir.is_dir():
            return removed
        by_name: dict[str, builtins.list[Path]] = {}
        for entry in self._tdir.iterdir():
            name = _tmp_owner(entry.name)
            if name is not None:
                by_name.setdefault(name, []).append(entry)
        for name, entries in by_name.items():
            with self._try_lock(name) as held:
                if not held:
                    continue
                for entry in entries:
                    remove_tree(entry)
                    removed.append(entry)
        if removed:
            log.info("removed leftovers of interrupted template builds", count=len(removed))
        return removed

    # ---- internals --------------------------------------------------------------------------

    def _build_locked(self, recipe: Recipe, report: ProgressCallback) -> TemplateInfo:
        name = recipe.name
        tmp = self._tdir / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o755)
        rootfs = tmp / ROOTFS_DIR
        cache = self._tdir / ".cache" / name
        t0 = time.monotonic()
        try:
            rootfs.mkdir(mode=0o755)
            cache.mkdir(parents=True, exist_ok=True)
            result = recipe.build(BuildContext(rootfs=rootfs, cache_dir=cache, progress=report))
            report(PHASE_FINALIZE, 0.0, "measuring the layer")
            lower: builtins.list[str] = []
            for parent in recipe.parents:
                pm = self.manifest(parent)
                if pm is None:
                    raise HutchError(ErrorCode.template_not_ready, f"{parent!r} is not built")
                lower += [layer for layer in pm.layers if layer not in lower]
            manifest = TemplateManifest(
                name=name,
                description=recipe.description,
                layers=[*lower, name],
                built_at=datetime.now(UTC),
                build_seconds=round(time.monotonic() - t0, 1),
                size_bytes=disk_usage(rootfs),
                recipe_sha256=recipe.fingerprint(),
                packages=result.packages,
                details=result.details,
            )
            _write_durably(tmp / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
            report(PHASE_FINALIZE, 0.5, "moving the layer into place")
            self._install(tmp, self._tdir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(tmp)
            raise
        log.info(
            "template built",
            template=name,
            seconds=manifest.build_seconds,
            size_bytes=manifest.size_bytes,
        )
        report(PHASE_FINALIZE, 1.0, f"{name} ready")
        return manifest.info()

    def _install(self, tmp: Path, final: Path) -> None:
        if not (final.exists() or final.is_symlink()):
            os.rename(tmp, final)
            fsync_dir(self._tdir)
            return
        # Replacing: swap atomically so readers never find the template missing; the old
        # tree ends up at `tmp` and is deleted (or cleaned up by a later build).
        if not rename_exchange(tmp, final):
            aside = self._tdir / f"{TMP_PREFIX}{final.name}-{secrets.token_hex(4)}"
            os.rename(final, aside)
            os.rename(tmp, final)
            tmp = aside
        fsync_dir(self._tdir)
        try:
            remove_tree(tmp)
        except OSError as e:
            log.warning("could not delete the replaced template yet", error=str(e))

    def _leftovers(self, name: str) -> builtins.list[Path]:
        if not self._tdir.is_dir():
            return []
        return [e for e in self._tdir.iterdir() if _tmp_owner(e.name) == name]

    def _lock_path(self, name: str) -> Path:
        d = self._tdir / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{name}.lock"

    @contextlib.contextmanager
    def _lock(self, name: str, report: ProgressCallback) -> Iterator[None]:
        fd = os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report(PHASE_WAIT, None, f"another process is building {name}; waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _try_lock(self, name: str) -> Iterator[bool]:
        fd = os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                held = False
            yield held
        finally:
            os.close(fd)

    def _known_names(self) -> builtins.list[str]:
        names = set(self._recipes)
        if self._tdir.is_dir():
            for entry in self._tdir.iterdir():
                if _NAME.match(entry.name) and (entry / MANIFEST_FILE).is_file():
                    names.add(entry.name)
        return sorted(names)

    def _info(self, name: str) -> TemplateInfo:
        m = self.manifest(name)
        if m is not None:
            return m.info()
        recipe = self._recipes.get(name)
        return TemplateInfo(
            name=name, ready=False, description=recipe.description if recipe else None
        )

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise HutchError(
                ErrorCode.template_not_found,
                f"template name {name!r} is not valid: use 1-63 lowercase letters, digits, "
                f"'.', '_' or '-', starting with a letter or digit; "
                f"available: {', '.join(self._known_names()) or 'none'}",
            )

    def _not_found(self, name: str) -> HutchError:
        return HutchError(
            ErrorCode.template_not_found,
            f"template {name!r} not found; available: {', '.join(self._known_names()) or 'none'}",
        )


def _tmp_owner(entry: str) -> str | None:
    """The template a `.tmp-<name>-<hex>` entry belongs to, or None for anything else."""
    if not entry.startswith(TMP_PREFIX):
        return None
    name, sep, suffix = entry[len(TMP_PREFIX) :].rpartition("-")
    if not sep or not re.fullmatch(r"[0-9a-f]{8}", suffix) or not _NAME.match(name):
        return None
    return name


def _write_durably(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
