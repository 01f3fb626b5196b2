"""The real `base` template: built once per machine into the shared test directory with
debootstrap (a few minutes the first time), then checked in a chroot and under an overlay."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore

pytestmark = [pytest.mark.root, pytest.mark.slow]

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def store() -> TemplateStore:
    if os.geteuid() != 0:
        pytest.skip("building the base template needs root")
    s = TemplateStore(SHARED_TEST_TEMPLATE_DIR)
    s.ensure("base")
    return s


@pytest.fixture(scope="module")
def layer(store: TemplateStore) -> Path:
    [rootfs] = store.layers("base")
    return rootfs


def chroot(root: Path, *argv: str, user: bool = False) -> str:
    cmd = ["chroot", *(["--userspec=1000:1000"] if user else []), str(root), *argv]
    env = {**ENV, "HOME": "/home/user" if user else "/root", "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.timeout(1800)
def test_base_is_listed_ready_with_its_manifest(store: TemplateStore) -> None:
    info = store.get("base")
    assert info.ready and info.built_at is not None
    assert info.size_bytes is not None and 50 * 2**20 < info.size_bytes < 512 * 2**20
    m = store.manifest("base")
    assert m is not None and m.layers == ["base"]
    assert re.fullmatch(r"[0-9a-f]{64}", m.recipe_sha256)
    names = {p.split("=", 1)[0] for p in m.packages}
    assert {"python3", "python3-pip", "python3-venv", "git", "curl", "vim-tiny"} <= names
    assert "sudo" not in names and "locales" not in names
    assert m.details["suite"] == "bookworm"


def test_python_git_and_curl_run(layer: Path) -> None:
    assert (
        chroot(layer, "/usr/bin/env", "python3", "-c", "import sys; print(sys.version_info[:2])")
        == "(3, 11)\n"
    )
    assert chroot(layer, "git", "--version").startswith("git version 2.")
    assert chroot(layer, "curl", "--version").startswith("curl 7.")
    chroot(layer, "/bin/bash", "-lc", "true")


def test_user_account(layer: Path) -> None:
    assert chroot(layer, "getent", "passwd", "user") == "user:x:1000:1000::/home/user:/bin/bash\n"
    out = chroot(
        layer, "/bin/bash", "-lc", 'id -u; id -g; echo "$HOME"; test -w "$HOME"', user=True
    )
    assert out.split() == ["1000", "1000", "/home/user"]
    st = (layer / "home" / "user").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_nothing_of_the_host_or_the_build_is_left(layer: Path) -> None:
    assert (layer / "etc/hostname").read_text() == "sandbox\n"
    assert "nameserver" not in (layer / "etc/resolv.conf").read_text()
    assert "localhost" in (layer / "etc/hosts").read_text()
    assert list((layer / "var/lib/apt/lists").glob("*_Packages")) == []
    assert list((layer / "var/cache/apt/archives").glob("*.deb")) == []
    assert not (layer / "debootstrap").exists()
    for d in ("tmp", "var/tmp"):
        assert (layer / d).stat().st_mode & 0o7777 == 0o1777


def test_layer_works_as_overlay_lower_and_stays_untouched(layer: Path, tmp_path: Path) -> None:
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={layer},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        out = chroot(
            merged,
            "/bin/bash",
            "-lc",
            "cd ~ && python3 -m venv v && v/bin/python -m pip --version && echo ok > f",
            user=True,
        )
        assert "pip " in out
        assert (upper / "home/user/f").read_text() == "ok\n"
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert not (layer / "home/user/v").exists()
    assert not (layer / "home/user/f").exists()
