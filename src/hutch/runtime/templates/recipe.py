"""What a template recipe is: the seam between the generic store and one way of making a layer."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hutch.models import ErrorCode, HutchError

# progress(phase, fraction of that phase in [0, 1] or None when unknown, message)
ProgressCallback = Callable[[str, float | None, str], None]

# Phases a build goes through, in order; recipes may skip some. "wait" means another process
# holds the build lock for the same template.
PHASE_WAIT = "wait"
PHASE_INDICES = "indices"
PHASE_DOWNLOAD = "download"
PHASE_EXTRACT = "extract"
PHASE_INSTALL = "install"
PHASE_CUSTOMIZE = "customize"
PHASE_VERIFY = "verify"
PHASE_FINALIZE = "finalize"


def no_progress(phase: str, fraction: float | None, message: str) -> None:
    """A progress callback that ignores every report."""
    _ = (phase, fraction, message)


class TemplateBuildError(HutchError):
    """A template could not be built; the detail says which step failed and why."""

    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.internal, detail)


@dataclass(frozen=True)
class BuildContext:
    """What a recipe gets to work with."""

    rootfs: Path  # an empty directory to fill; it becomes the layer
    cache_dir: Path  # survives between builds of this recipe (downloads, statistics)
    progress: ProgressCallback


@dataclass
class BuildResult:
    """What a recipe reports about the layer it made (recorded in template.json)."""

    packages: list[str] = field(default_factory=list)  # "name=version", sorted
    details: dict[str, str] = field(default_factory=dict)


class Recipe(abc.ABC):
    """One buildable template. A template is an ordered stack of layers; a recipe makes the top
    layer and names the templates whose layers lie beneath it (empty for a root layer)."""

    name: str
    description: str
    parents: tuple[str, ...] = ()

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A sha256 hex digest of everything in the project that decides what gets built."""

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> BuildResult:
        """Fill `ctx.rootfs`. Raise on failure; the store removes whatever was left."""
