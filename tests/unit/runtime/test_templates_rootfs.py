"""Shaping a root file system into a layer, on small trees made by the test; and the
file-system helpers (atomic exchange, mount-aware removal) on real mounts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hutch.runtime.templates import TemplateBuildError
from hutch.runtime.templates.base import BaseRecipe, package_list, recipe_text
from hutch.runtime.templates.fsops import disk_usage, mounts_under, remove_tree, rename_exchange
from hutch.runtime.templates.rootfs import (
    add_user,
    clean_package_caches,
    installed_packages,
    slim,
    write_file,
)

DPKG_STATUS = """\
Package: bash
Status: install ok installed
Priority: required
Version: 5.2.15-2+b13
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.

Package: removed-thing
Status: deinstall ok config-files
Version: 1.0

Package: apt
Status: install ok installed
Version: 2.6.1
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc" / "skel").mkdir(parents=True)
    (r / "etc" / "skel" / ".bashrc").write_text("# bashrc\n")
    (r / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (r / "etc" / "group").write_text("root:x:0:\nusers:x:100:\n")
    (r / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc" / "gshadow").write_text("root:*::\n")
    return r


def test_add_user_writes_account_and_home(root: Path) -> None:
    add_user(root, "user", 1000, "/home/user", epoch=86400 * 20089)
    assert "user:x:1000:1000::/home/user:/bin/bash" in (root / "etc/passwd").read_text()
    assert "user:x:1000:" in (root / "etc/group").read_text().splitlines()
    assert "user:*:20089:0:99999:7:::" in (root / "etc/shadow").read_text().splitlines()
    assert "user:!::" in (root / "etc/gshadow").read_text().splitlines()
    home = root / "home" / "user"
    for p in (home, home / ".bashrc"):
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert (home / ".bashrc").read_text() == "# bashrc\n"


def test_add_user_refuses_a_taken_uid(root: Path) -> None:
    with (root / "etc/passwd").open("a") as f:
        f.write("someone:x:1000:1000::/home/someone:/bin/sh\n")
    with pytest.raises(TemplateBuildError, match="someone"):
        add_user(root, "user", 1000, "/home/user")


def test_write_file_replaces_a_symlink_instead_of_following_it(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "host-resolv.conf"
    outside.write_text("nameserver 10.0.0.1\n")
    (root / "etc" / "resolv.conf").symlink_to(outside)
    write_file(root, "etc/resolv.conf", "# placeholder\n", mtime=1735689600)
    assert outside.read_text() == "nameserver 10.0.0.1\n"
    p = root / "etc" / "resolv.conf"
    assert not p.is_symlink() and p.read_text() == "# placeholder\n"
    assert p.stat().st_mtime == 1735689600


def test_write_file_refuses_to_leave_the_root(root: Path) -> None:
    with pytest.raises(ValueError):
        write_file(root, "../escape", "x")


def test_clean_package_caches_empties_apt(root: Path) -> None:
    archives = root / "var/cache/apt/archives"
    (archives / "partial").mkdir(parents=True)
    (archives / "bash_5.2_amd64.deb").write_bytes(b"deb")
    (root / "var/cache/apt/pkgcache.bin").write_bytes(b"bin")
    lists = root / "var/lib/apt/lists"
    (lists / "partial").mkdir(parents=True)
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status-old").write_text("x")
    (root / "var/lib/dpkg/status").write_text("x")
    clean_package_caches(root)
    assert [p.name for p in archives.iterdir()] == ["partial"]
    assert not (root / "var/cache/apt/pkgcache.bin").exists()
    assert [p.name for p in lists.iterdir()] == ["partial"]
    assert [p.name for p in (root / "var/lib/dpkg").iterdir()] == ["status"]


def test_slim_keeps_copyright_files(root: Path) -> None:
    doc = root / "usr/share/doc/bash"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("GPL")
    (doc / "changelog.gz").write_bytes(b"x")
    (root / "usr/share/man/man1").mkdir(parents=True)
    (root / "usr/share/man/man1/bash.1.gz").write_bytes(b"x")
    (root / "usr/share/locale/de/LC_MESSAGES").mkdir(parents=True)
    slim(root)
    assert [p.name for p in doc.iterdir()] == ["copyright"]
    assert list((root / "usr/share/man").iterdir()) == []
    assert list((root / "usr/share/locale").iterdir()) == []
    cfg = (root / "etc/dpkg/dpkg.cfg.d/hutch-slim").read_text()
    assert "path-include=/usr/share/doc/*/copyright" in cfg


def test_installed_packages_from_dpkg_status(root: Path) -> None:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    assert installed_packages(root) == ["apt=2.6.1", "bash=5.2.15-2+b13"]


def test_base_recipe_lists_the_promised_packages() -> None:
    pkgs = package_list()
    for p in ("python3", "python3-pip", "python3-venv", "git", "curl", "ca-certificates"):
        assert p in pkgs
    assert "sudo" not in pkgs and "locales" not in pkgs
    assert package_list(b"# comment\npython3  # inline\n\ngit\n") == ["python3", "git"]


def test_base_fingerprint_follows_the_package_list() -> None:
    import hashlib

    fp = BaseRecipe().fingerprint()
    assert len(fp) == 64 and fp == BaseRecipe().fingerprint()
    assert fp != hashlib.sha256(recipe_text()).hexdigest()  # suite and version are included


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    before = disk_usage(tmp_path)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "c").symlink_to("/does/not/exist")
    assert before >= 100_000
    assert disk_usage(tmp_path) - before < 4096


def test_rename_exchange_swaps_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").touch()
    (b / "from-b").touch()
    assert rename_exchange(a, b)
    assert (a / "from-b").exists() and (b / "from-a").exists()


def test_mounts_under_reads_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:5 / /t/.tmp-base-1/rootfs/proc rw - proc proc rw\n"
        "31 22 0:6 / /t/.tmp-base-1/rootfs/dev/with\\040space rw - tmpfs x rw\n"
        "32 22 0:7 / /t/.tmp-base-10 rw - tmpfs x rw\n"
    )
    found = mounts_under(Path("/t/.tmp-base-1"), info)
    assert found == [
        Path("/t/.tmp-base-1/rootfs/dev/with space"),
        Path("/t/.tmp-base-1/rootfs/proc"),
    ]


@pytest.mark.root
def test_remove_tree_detaches_mounts_instead_of_deleting_through_them(tmp_path: Path) -> None:
    precious = tmp_path / "host-dev"
    precious.mkdir()
    (precious / "null-like").write_text("keep me")
    tree = tmp_path / ".tmp-base-0123abcd"
    target = tree / "rootfs" / "dev"
    target.mkdir(parents=True)
    (tree / "rootfs" / "file").write_text("junk")
    subprocess.run(["mount", "--bind", str(precious), str(target)], check=True)
    try:
        assert mounts_under(tree) == [target]
        remove_tree(tree)
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=False, capture_output=True)
    assert not tree.exists()
    assert (precious / "null-like").read_text() == "keep me"
