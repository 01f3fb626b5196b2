"""A real runner process (root, real namespaces and cgroups) for the runtime tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.runner import RunnerProc, ensure_base_template, kill_all, start_runner

__all__ = ["RunnerProc", "kill_all", "start_runner"]
pytestmark = pytest.mark.root


@pytest.fixture(scope="session")
def base_template() -> None:
    """The shared base template (built once per machine)."""
    if os.geteuid() != 0:
        pytest.skip("the runtime tests need root")
    ensure_base_template()


@pytest.fixture(scope="session")
def runner_dir(base_template: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data dir under pytest's 0700 tmp: sandboxes must not need to traverse its parents."""
    d = tmp_path_factory.mktemp("runner")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def runner(runner_dir: Path) -> Iterator[RunnerProc]:
    """One runner for the session."""
    rp = start_runner(runner_dir / "main")
    yield rp
    kill_all(rp)
    rp.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
