"""debootstrap output parsing, mirror discovery and the command line (no debootstrap run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.runtime.templates import TemplateBuildError
from hutch.runtime.templates.debootstrap import (
    DEFAULT_MIRROR,
    DebootstrapProgress,
    debootstrap_command,
    find_mirror,
    run_debootstrap,
)

# Lines recorded from `debootstrap --variant=minbase ... bookworm` on this project's base recipe,
# cut down to three packages (two of them "required", so extracted first). Some lines really
# end with a space.
RECORDED_LINES = [
    "I: Target architecture can be executed",
    "I: Retrieving InRelease ",
    "I: Checking Release signature",
    "I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)",
    "I: Retrieving Packages ",
    "I: Validating Packages ",
    "I: Resolving dependencies of required packages...",
    "I: Resolving dependencies of base packages...",
    "I: Checking component main on http://deb.debian.org/debian...",
    "I: Retrieving adduser 3.134",
    "I: Validating adduser 3.134",
    "I: Retrieving apt 2.6.1",
    "I: Validating apt 2.6.1",
    "I: Retrieving base-files 12.4+deb12u15",
    "I: Validating base-files 12.4+deb12u15",
    "I: Chosen extractor for .deb packages: dpkg-deb",
    "I: Extracting adduser...",
    "I: Extracting base-files...",
    "I: Installing core packages...",
    "I: Unpacking required packages...",
    "I: Unpacking adduser...",
    "I: Unpacking base-files...",
    "I: Configuring required packages...",
    "I: Configuring base-files...",
    "I: Configuring adduser...",
    "I: Unpacking the base system...",
    "I: Unpacking apt...",
    "I: Configuring the base system...",
    "I: Configuring apt...",
    "I: Base system installed successfully.",
]
RECORDED = "\n".join(RECORDED_LINES) + "\n"

Event = tuple[str, float | None, str]


def parse(
    lines: str, expected: dict[str, int] | None = None
) -> tuple[list[Event], DebootstrapProgress]:
    events: list[Event] = []
    parser = DebootstrapProgress(lambda p, f, m: events.append((p, f, m)), expected)
    for line in lines.splitlines(keepends=True):
        parser.feed(line)
    return events, parser


def phases(events: list[Event]) -> list[str]:
    out: list[str] = []
    for phase, _, _ in events:
        if not out or out[-1] != phase:
            out.append(phase)
    return out


def test_recorded_output_goes_through_the_phases_in_order() -> None:
    events, parser = parse(RECORDED)
    assert phases(events) == ["indices", "download", "extract", "install"]
    assert parser.done
    assert parser.counts == {"download": 3, "extract": 2}
    assert events[-1] == ("install", 1.0, "Base system installed successfully.")


def test_first_build_has_no_totals_for_download_and_extract() -> None:
    events, _ = parse(RECORDED)
    assert all(f is None for p, f, _ in events if p in ("indices", "download", "extract"))


def test_install_fraction_counts_unpack_and_configure_of_every_package() -> None:
    events, _ = parse(RECORDED)
    fractions = [f for p, f, _ in events if p == "install" and f is not None]
    # 3 packages downloaded: 6 steps; the last one is reported by the success line only
    assert fractions == pytest.approx(
        [0, 0, 1 / 6, 2 / 6, 2 / 6, 3 / 6, 4 / 6, 4 / 6, 5 / 6, 5 / 6, 0.99, 1.0]
    )
    assert fractions == sorted(fractions)


def test_totals_from_a_previous_build_give_fractions() -> None:
    events, _ = parse(RECORDED, expected={"download": 3, "extract": 2})
    download = [f for p, f, _ in events if p == "download"]
    extract = [f for p, f, m in events if p == "extract" and m.startswith("Extracting")]
    # Retrieving does not count, Validating does; a counted phase stops short of 1.0
    assert download == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 0.99])
    assert extract == pytest.approx([0.5, 0.99])


def test_messages_name_the_package() -> None:
    events, _ = parse(RECORDED)
    messages = [m for _, _, m in events]
    assert "Retrieving apt 2.6.1" in messages
    assert "Extracting base-files" in messages
    assert "Configuring adduser" in messages


def test_errors_and_warnings_are_collected_and_not_done() -> None:
    _, parser = parse(
        "I: Retrieving InRelease \n"
        "W: Retrying failed download of http://deb.debian.org/debian/dists/bookworm/InRelease\n"
        "E: Failed getting release file http://deb.debian.org/debian/dists/bookworm/InRelease\n"
    )
    assert parser.errors == [
        "Failed getting release file http://deb.debian.org/debian/dists/bookworm/InRelease"
    ]
    assert len(parser.warnings) == 1
    assert not parser.done


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert find_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    assert find_mirror("bookworm-security", tmp_path) == "http://security.example/debian-security"


def test_disabled_and_source_only_stanzas_are_skipped(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n"
    )
    assert find_mirror("bookworm", tmp_path) == DEFAULT_MIRROR


def test_mirror_from_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert find_mirror("bookworm", tmp_path) == "http://one.example/debian"


def test_mirror_falls_back_to_deb_debian_org(tmp_path: Path) -> None:
    assert find_mirror("bookworm", tmp_path) == "http://deb.debian.org/debian"


def test_command_runs_debootstrap_in_its_own_namespaces(tmp_path: Path) -> None:
    cmd = debootstrap_command(
        target=tmp_path / "rootfs",
        suite="bookworm",
        mirror="http://deb.debian.org/debian",
        variant="minbase",
        packages=["python3", "git"],
        cache_dir=tmp_path / "cache",
    )
    assert cmd[:3] == ["setpriv", "--pdeathsig", "KILL"]
    unshare = cmd[cmd.index("unshare") : cmd.index("debootstrap")]
    assert "--mount" in unshare and "--pid" in unshare and "--kill-child=KILL" in unshare
    assert "--include=python3,git" in cmd
    assert f"--cache-dir={tmp_path / 'cache'}" in cmd
    assert "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg" in cmd
    assert cmd[-3:] == ["bookworm", str(tmp_path / "rootfs"), "http://deb.debian.org/debian"]


def run_script(script: str, tmp_path: Path, timeout_s: float = 30) -> list[Event]:
    events: list[Event] = []
    parser = DebootstrapProgress(lambda p, f, m: events.append((p, f, m)))
    run_debootstrap(
        ["/bin/sh", "-c", script], tmp_path, parser, {"PATH": "/usr/bin:/bin"}, timeout_s
    )
    return events


def test_run_feeds_the_parser_and_succeeds_on_the_success_line(tmp_path: Path) -> None:
    script = "echo 'I: Retrieving InRelease '; echo 'I: Base system installed successfully.'"
    events = run_script(script, tmp_path)
    assert [p for p, _, _ in events] == ["indices", "install"]


def test_run_reports_debootstrap_errors(tmp_path: Path) -> None:
    with pytest.raises(TemplateBuildError, match="Failed getting release file"):
        run_script("echo 'E: Failed getting release file http://x/InRelease'; exit 1", tmp_path)


def test_run_without_success_line_fails_even_with_exit_0(tmp_path: Path) -> None:
    with pytest.raises(TemplateBuildError, match="exit code 0"):
        run_script("echo 'I: Retrieving InRelease '", tmp_path)


def test_run_is_killed_after_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(TemplateBuildError, match="did not finish within"):
        run_script("echo 'I: Retrieving InRelease '; exec sleep 30", tmp_path, timeout_s=0.3)
