"""Template store: read-only root file system layers that sandboxes mount beneath their own
writable layer, and the recipe that builds the `base` template with debootstrap."""

from pathlib import Path

from hutch.runtime.templates.base import BaseRecipe
from hutch.runtime.templates.recipe import (
    BuildContext,
    BuildResult,
    ProgressCallback,
    Recipe,
    TemplateBuildError,
)
from hutch.runtime.templates.store import TemplateManifest, TemplateStore

# Where tests build `base` once per machine and reuse it across runs (needs root to build).
SHARED_TEST_TEMPLATE_DIR = Path("/var/cache/hutch/templates")

__all__ = [
    "SHARED_TEST_TEMPLATE_DIR",
    "BaseRecipe",
    "BuildContext",
    "BuildResult",
    "ProgressCallback",
    "Recipe",
    "TemplateBuildError",
    "TemplateManifest",
    "TemplateStore",
]
