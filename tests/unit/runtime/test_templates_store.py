"""TemplateStore with small recipes that write a few files: the store is generic, so locking,
atomic installation, cleanup and errors are tested without debootstrap."""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hutch.models import ErrorCode, HutchError
from hutch.runtime.templates import BuildContext, BuildResult, Recipe, TemplateStore

DEADLINE_S = 30.0


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FileRecipe(Recipe):
    """Writes /etc/os-release with `content`; can record runs, fail, or wait for a gate file."""

    description = "a few files"

    def __init__(
        self,
        name: str = "base",
        content: str = "v1",
        parents: tuple[str, ...] = (),
        runs: Path | None = None,
        gate: Path | None = None,
        fail: bool = False,
    ) -> None:
        self.name = name
        self.content = content
        self.parents = parents
        self.runs = runs
        self.gate = gate
        self.fail = fail

    def fingerprint(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()

    def build(self, ctx: BuildContext) -> BuildResult:
        ctx.progress("customize", 0.0, "writing files")
        (ctx.rootfs / "etc").mkdir()
        (ctx.rootfs / "etc" / "os-release").write_text(self.content)
        (ctx.rootfs / "tmp").mkdir(mode=0o1777)
        if self.runs is not None:
            with self.runs.open("a") as f:
                f.write(f"{os.getpid()}\n")
        if self.gate is not None:
            (self.gate.parent / f"started-{os.getpid()}").touch()
            wait_for(self.gate.exists, "the gate")
        if self.fail:
            raise RuntimeError("recipe failed on purpose")
        ctx.progress("customize", 1.0, "done")
        return BuildResult(packages=["fake=1.0"], details={"kind": "test"})


def child_build(tdir: str, work: str, gated: bool) -> None:
    """Runs in a separate process: build `base`, recording progress phases and the result."""
    w = Path(work)
    recipe = FileRecipe(runs=w / "runs", gate=(w / "go") if gated else None)
    store = TemplateStore(Path(tdir), [recipe])

    def progress(phase: str, fraction: float | None, message: str) -> None:
        with (w / f"phases-{os.getpid()}").open("a") as f:
            f.write(phase + "\n")

    info = store.build("base", progress)
    (w / f"result-{os.getpid()}").write_text(info.model_dump_json())


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def start_child(tdir: Path, work: Path, gated: bool) -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("spawn").Process(
        target=child_build, args=(str(tdir), str(work), gated)
    )
    proc.start()
    return proc


@pytest.fixture
def tdir(tmp_path: Path) -> Path:
    return tmp_path / "templates"


def leftovers(tdir: Path) -> list[str]:
    return sorted(p.name for p in tdir.iterdir() if p.name.startswith(".tmp-"))


def test_list_shows_buildable_base_not_ready(tdir: Path) -> None:
    [info] = TemplateStore(tdir, [FileRecipe()]).list()
    assert info.name == "base"
    assert not info.ready
    assert info.size_bytes is None
    assert info.description == "a few files"


def test_default_store_knows_base(tdir: Path) -> None:
    store = TemplateStore(tdir)
    assert [t.name for t in store.list()] == ["base"]
    assert not store.get("base").ready


def test_unknown_template_names_what_is_available(tdir: Path) -> None:
    store = TemplateStore(tdir, [FileRecipe()])
    for call in (store.get, store.layers, store.ensure, store.build):
        with pytest.raises(HutchError) as e:
            call("python-data")
        assert e.value.code == ErrorCode.template_not_found
        assert e.value.status == 404
        assert "available: base" in e.value.detail


@pytest.mark.parametrize("bad", ["../etc", "", "Base", ".tmp-base-00000000", "a/b", "x" * 64])
def test_malformed_names_never_reach_the_file_system(tdir: Path, bad: str) -> None:
    store = TemplateStore(tdir, [FileRecipe()])
    with pytest.raises(HutchError) as e:
        store.get(bad)
    assert e.value.code == ErrorCode.template_not_found
    with pytest.raises(HutchError):
        store.build(bad)
    assert not tdir.exists()


def test_layers_of_unbuilt_template_is_not_ready(tdir: Path) -> None:
    with pytest.raises(HutchError) as e:
        TemplateStore(tdir, [FileRecipe()]).layers("base")
    assert e.value.code == ErrorCode.template_not_ready
    assert e.value.status == 409


def test_build_installs_layer_and_manifest(tdir: Path) -> None:
    store = TemplateStore(tdir, [FileRecipe()])
    seen: list[tuple[str, float | None]] = []
    info = store.build("base", lambda p, f, m: seen.append((p, f)))
    assert info.ready and info.name == "base"
    assert info.size_bytes is not None and info.size_bytes > 0
    assert store.layers("base") == (tdir / "base" / "rootfs",)
    assert (tdir / "base" / "rootfs" / "etc" / "os-release").read_text() == "v1"
    manifest = json.loads((tdir / "base" / "template.json").read_text())
    assert manifest["name"] == "base"
    assert manifest["layers"] == ["base"]
    assert manifest["packages"] == ["fake=1.0"]
    assert manifest["recipe_sha256"] == hashlib.sha256(b"v1").hexdigest()
    assert manifest["size_bytes"] == info.size_bytes
    assert store.get("base") == info
    assert ("customize", 1.0) in seen and seen[-1] == ("finalize", 1.0)
    assert leftovers(tdir) == []


def test_ensure_builds_once(tdir: Path) -> None:
    runs = tdir.parent / "runs"
    store = TemplateStore(tdir, [FileRecipe(runs=runs)])
    first = store.ensure("base")
    second = store.ensure("base")
    assert first == second
    assert len(runs.read_text().splitlines()) == 1


def test_failed_build_leaves_nothing(tdir: Path) -> None:
    store = TemplateStore(tdir, [FileRecipe(fail=True)])
    with pytest.raises(RuntimeError, match="on purpose"):
        store.build("base")
    assert not (tdir / "base").exists()
    assert leftovers(tdir) == []
    assert not store.get("base").ready


def test_forced_rebuild_swaps_the_layer(tdir: Path) -> None:
    TemplateStore(tdir, [FileRecipe(content="v1")]).build("base")
    old = TemplateStore(tdir, [FileRecipe(content="v1")]).get("base")
    store = TemplateStore(tdir, [FileRecipe(content="v2")])
    assert store.build("base").built_at == old.built_at  # not forced: kept
    new = store.build("base", force=True)
    assert new.built_at is not None and old.built_at is not None and new.built_at > old.built_at
    assert (tdir / "base" / "rootfs" / "etc" / "os-release").read_text() == "v2"
    assert leftovers(tdir) == []


def test_leftovers_of_an_interrupted_build_are_removed_by_the_next(tdir: Path) -> None:
    junk = tdir / ".tmp-base-0123abcd" / "rootfs" / "usr"
    junk.mkdir(parents=True)
    (junk / "half-written").write_text("x")
    TemplateStore(tdir, [FileRecipe()]).build("base")
    assert leftovers(tdir) == []


def test_cleanup_spares_builds_in_progress(tdir: Path) -> None:
    store = TemplateStore(tdir, [FileRecipe()])
    busy = tdir / ".tmp-other-deadbeef"
    busy.mkdir(parents=True)
    (tdir / ".locks").mkdir()
    fd = os.open(tdir / ".locks" / "other.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert store.cleanup() == []
        assert busy.exists()
    finally:
        os.close(fd)
    assert store.cleanup() == [busy]
    assert not busy.exists()


def test_unrelated_hidden_entries_are_not_touched(tdir: Path) -> None:
    keep = [tdir / ".tmp-base-notahex!", tdir / ".tmp-x", tdir / ".cache" / "base"]
    for p in keep:
        p.mkdir(parents=True)
    TemplateStore(tdir, [FileRecipe()]).build("base")
    assert all(p.exists() for p in keep)


def test_stacked_template_lists_its_layers_lowest_first(tdir: Path) -> None:
    store = TemplateStore(tdir, [FileRecipe(), FileRecipe(name="data", parents=("base",))])
    store.ensure("data")
    assert store.get("base").ready
    assert store.layers("data") == (tdir / "base" / "rootfs", tdir / "data" / "rootfs")
    assert [t.name for t in store.list()] == ["base", "data"]


def test_built_template_without_recipe_is_usable_but_not_rebuildable(tdir: Path) -> None:
    TemplateStore(tdir, [FileRecipe(name="custom")]).build("custom")
    store = TemplateStore(tdir, [FileRecipe()])
    assert store.get("custom").ready
    assert store.layers("custom") == (tdir / "custom" / "rootfs",)
    with pytest.raises(HutchError) as e:
        store.build("custom", force=True)
    assert e.value.code == ErrorCode.invalid_request


def test_corrupt_manifest_counts_as_not_built(tdir: Path) -> None:
    store = TemplateStore(tdir, [FileRecipe()])
    store.build("base")
    (tdir / "base" / "template.json").write_text("{not json")
    assert not store.get("base").ready
    with pytest.raises(HutchError) as e:
        store.layers("base")
    assert e.value.code == ErrorCode.template_not_ready


def test_a_replaced_manifest_is_read_again(tdir: Path) -> None:
    store = TemplateStore(tdir, [FileRecipe()])
    store.build("base")
    first = store.manifest("base")
    assert first is not None and store.manifest("base") is first  # cached while unchanged
    path = tdir / "base" / "template.json"
    tmp = path.with_suffix(".new")
    tmp.write_text(first.model_copy(update={"description": "rebuilt"}).model_dump_json())
    os.replace(tmp, path)  # as a rebuild does: a new file in its place
    again = store.manifest("base")
    assert again is not None and again.description == "rebuilt"
    path.unlink()
    assert store.manifest("base") is None


def test_second_process_waits_for_the_first_and_uses_its_result(tmp_path: Path) -> None:
    tdir, work = tmp_path / "templates", tmp_path / "work"
    work.mkdir()
    first = start_child(tdir, work, gated=True)
    second: multiprocessing.process.BaseProcess | None = None
    try:
        wait_for(lambda: any(work.glob("started-*")), "the first build to start")
        second = start_child(tdir, work, gated=False)
        wait_for(
            lambda: "wait" in _read(work / f"phases-{second.pid}").split(),
            "the second build to report that it waits",
        )
        assert not (tdir / "base").exists()
        (work / "go").touch()
        first.join(DEADLINE_S)
        second.join(DEADLINE_S)
    finally:
        for p in (first, second):
            if p is not None and p.is_alive():
                p.kill()
    assert second is not None
    assert first.exitcode == 0 and second.exitcode == 0
    assert (work / "runs").read_text().split() == [str(first.pid)]  # built once
    a = json.loads((work / f"result-{first.pid}").read_text())
    b = json.loads((work / f"result-{second.pid}").read_text())
    assert a == b and a["ready"]


def test_killed_build_leaves_no_template_and_is_cleaned_up(tmp_path: Path) -> None:
    tdir, work = tmp_path / "templates", tmp_path / "work"
    work.mkdir()
    proc = start_child(tdir, work, gated=True)
    try:
        wait_for(lambda: any(work.glob("started-*")), "the build to start")
    finally:
        proc.kill()
        proc.join(DEADLINE_S)
    assert len(leftovers(tdir)) == 1
    store = TemplateStore(tdir, [FileRecipe()])
    assert not store.get("base").ready
    with pytest.raises(HutchError):
        store.layers("base")
    assert store.build("base").ready
    assert leftovers(tdir) == []


def test_stale_when_the_recipe_changed(tdir: Path) -> None:
    TemplateStore(tdir, [FileRecipe(content="v1")]).build("base")
    assert not TemplateStore(tdir, [FileRecipe(content="v1")]).stale("base")
    changed = TemplateStore(tdir, [FileRecipe(content="v2")])
    assert changed.stale("base")
    assert changed.get("base").ready  # still usable
