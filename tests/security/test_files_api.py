"""The files API runs as host root in the runner, so it must never be steered out of the sandbox:
not by `..`, not by symlinks or hard links planted inside, not into /proc, /sys or /dev."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from hutch.models import ErrorCode, ExecUser, HutchError, MakeDir, Rename
from hutch.runner.client import RunnerClient
from tests.security.conftest import NewSandbox, Runner, sh
from tests.security.test_filesystem import init_host_pid

pytestmark = [pytest.mark.root, pytest.mark.anyio]


async def refused(call: Awaitable[Any], *codes: ErrorCode) -> ErrorCode:
    """Await a files-API call that must fail with one of `codes`; return the code."""
    with pytest.raises(HutchError) as ei:
        await call
    assert ei.value.code in codes, f"{ei.value.code}: {ei.value.detail}"
    return ei.value.code


OUTSIDE = ErrorCode.path_outside_sandbox


async def test_dotdot_above_root_is_refused(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    """Protection: path normalisation refuses `..` above `/` with `path_outside_sandbox` for
    every files operation (and relative paths too). A positive control shows the same file is
    readable by its real path, so the refusal is about the path, not the file."""
    sid = await new_sandbox()
    assert b"root:" in await client.read_bytes(sid, "/etc/passwd")
    for path in ("/../etc/passwd", "/home/../../etc/passwd", "/home/user/../../../../etc/passwd"):
        await refused(client.read_bytes(sid, path), OUTSIDE)
        await refused(client.stat(sid, path), OUTSIDE)
        await refused(client.exists(sid, path), OUTSIDE)
        await refused(client.write_file(sid, path, b"x"), OUTSIDE)
        await refused(client.remove(sid, path), OUTSIDE)
    await refused(client.list_files(sid, "/.."), OUTSIDE)
    await refused(client.mkdir(sid, MakeDir(path="/../escape")), OUTSIDE, ErrorCode.invalid_request)
    await refused(
        client.rename(sid, Rename(src="/etc/passwd", dst="/../../passwd")),
        OUTSIDE,
        ErrorCode.invalid_request,
    )
    await refused(client.read_bytes(sid, "etc/passwd"), OUTSIDE, ErrorCode.invalid_request)
    assert b"root:" in await client.read_bytes(sid, "/etc/passwd")


async def test_planted_symlinks_never_reach_the_host(
    client: RunnerClient, new_sandbox: NewSandbox, marker: tuple[Path, str]
) -> None:
    """Protection: openat2 with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV under
    the sandbox's root. Symlinks planted by sandbox root that point at the host marker by
    absolute path, by many `..`, through /proc/self/root, /proc/1/root and /proc/1/cwd resolve
    inside the sandbox (not found) or are refused; reads, listings, writes and mkdir through
    them never touch the host. Without the confinement the runner (host root) would follow
    them to the host file."""
    path, secret = marker
    sid = await new_sandbox()
    rel = str(path).lstrip("/")
    links = {
        "/tmp/abs": str(path),
        "/tmp/dots": "../../../../../../../../" + rel,
        "/tmp/selfroot": f"/proc/self/root/{rel}",
        "/tmp/oneroot": f"/proc/1/root/{rel}",
        "/tmp/hostdir": str(path.parent),
        "/tmp/procroot": "/proc/1/root",
        "/tmp/proccwd": "/proc/1/cwd",
    }
    script = " && ".join(f"ln -s '{target}' '{link}'" for link, target in links.items())
    assert (await sh(client, sid, script)).exit_code == 0

    for link in ("/tmp/abs", "/tmp/dots", "/tmp/selfroot", "/tmp/oneroot"):
        await refused(client.read_bytes(sid, link), OUTSIDE, ErrorCode.file_not_found)
    for d in ("/tmp/procroot/var/tmp", "/tmp/proccwd"):
        await refused(client.list_files(sid, d), OUTSIDE, ErrorCode.file_not_found)
    for p in (f"/tmp/hostdir/{path.name}", f"/tmp/procroot/{rel}", f"/tmp/proccwd/{rel}"):
        await refused(client.read_bytes(sid, p), OUTSIDE, ErrorCode.file_not_found)
    # Writes through the links: the runner replaces the link or refuses; the host file stays.
    await client.write_file(sid, "/tmp/abs", b"overwritten", user=ExecUser.root)
    assert (await client.stat(sid, "/tmp/abs")).type == "file"
    for p in (f"/tmp/procroot/{rel}", f"/tmp/proccwd/{rel}"):
        await refused(
            client.write_file(sid, p, b"overwritten", user=ExecUser.root),
            OUTSIDE,
            ErrorCode.file_not_found,
        )
    name = f"made-{secrets.token_hex(4)}"
    await refused(
        client.mkdir(sid, MakeDir(path=f"/tmp/procroot/var/tmp/{name}")),
        OUTSIDE,
        ErrorCode.file_not_found,
    )
    await refused(client.remove(sid, f"/tmp/procroot/{rel}"), OUTSIDE, ErrorCode.file_not_found)
    assert path.read_text() == secret, "the host marker changed"
    assert not (path.parent / name).exists()
    # A link to a host-looking directory resolves inside: to the sandbox's own /var/tmp.
    await sh(client, sid, "echo mine > /var/tmp/own")
    listed = {f.name for f in await client.list_files(sid, "/tmp/hostdir")}
    assert "own" in listed and path.name not in listed
    await client.write_file(sid, f"/tmp/hostdir/{path.name}", b"overwritten", user=ExecUser.root)
    r = await sh(client, sid, f"cat /var/tmp/{path.name}")
    assert r.stdout == "overwritten"
    assert path.read_text() == secret, "the host marker changed"


async def test_write_replaces_links_instead_of_writing_through(
    client: RunnerClient, new_sandbox: NewSandbox
) -> None:
    """Protection: uploads go to a new temporary file renamed over the target. A hard link or a
    symlink planted at the target is replaced: the file it pointed to keeps its content (here a
    root-owned file a user-level upload must not be able to change)."""
    sid = await new_sandbox()
    r = await sh(
        client,
        sid,
        "echo precious > /etc/precious && chmod 644 /etc/precious"
        " && ln /etc/precious /home/user/hard && ln -s /etc/precious /home/user/soft"
        " && chown -h user:user /home/user/soft && stat -c %h /etc/precious",
    )
    assert r.stdout.strip() == "2", r
    for link in ("/home/user/hard", "/home/user/soft"):
        await client.write_file(sid, link, b"replaced\n", user=ExecUser.user)
        assert await client.read_bytes(sid, link) == b"replaced\n"
        info = await client.stat(sid, link)
        assert info.type == "file" and info.uid == 1000
    assert await client.read_bytes(sid, "/etc/precious") == b"precious\n"
    r = await sh(client, sid, "cat /etc/precious; stat -c %h /etc/precious")
    assert r.stdout.split() == ["precious", "1"]


async def test_proc_sys_dev_are_refused(client: RunnerClient, new_sandbox: NewSandbox) -> None:
    """Protection: RESOLVE_NO_XDEV (the files API stays on the sandbox's root file system) and
    regular-files-only reads. /proc (the runner would read its own view of the sandbox's PID 1
    environment and memory maps), /sys and /dev (endless /dev/zero, devices) are refused, as
    is a FIFO (which would block a read)."""
    sid = await new_sandbox()
    await sh(client, sid, "mkfifo /tmp/fifo")
    for p in (
        "/proc/self/status",
        "/proc/1/environ",
        "/proc/1/maps",
        "/sys/kernel/notes",
        "/dev/zero",
        "/dev/urandom",
        "/dev/null",
    ):
        await refused(client.read_bytes(sid, p), OUTSIDE)
    for d in ("/proc", "/proc/1", "/sys", "/dev"):
        await refused(client.list_files(sid, d), OUTSIDE)
    await refused(
        client.write_file(sid, "/proc/sys/kernel/hostname", b"x", user=ExecUser.root), OUTSIDE
    )
    await refused(client.write_file(sid, "/dev/shm/x", b"x", user=ExecUser.root), OUTSIDE)
    await refused(client.read_bytes(sid, "/tmp/fifo"), ErrorCode.file_error)


async def test_files_api_of_one_sandbox_cannot_reach_another(
    client: RunnerClient, new_sandbox: NewSandbox, runner: Runner
) -> None:
    """Protection: each sandbox's files API is rooted at its own PID 1's root. A file written in
    sandbox A cannot be read through sandbox B's files API, neither by its path nor through
    symlinks B plants towards A's host pid (/proc/<pid>/root) or A's host state directory."""
    a = await new_sandbox()
    b = await new_sandbox()
    tag = secrets.token_hex(8)
    await client.write_file(a, f"/root/secret-{tag}", tag.encode(), user=ExecUser.root)
    assert await client.read_bytes(a, f"/root/secret-{tag}") == tag.encode()
    a_init = init_host_pid(a)
    state = runner.data_dir / "sandboxes" / a
    await sh(
        client,
        b,
        f"ln -s /proc/{a_init}/root/root /tmp/a-proc && ln -s {state} /tmp/a-state",
    )
    for p in (
        f"/root/secret-{tag}",
        f"/tmp/a-proc/secret-{tag}",
        "/tmp/a-state/disk.img",
        f"/tmp/a-state/mnt/disk/upper/root/secret-{tag}",
    ):
        await refused(client.read_bytes(b, p), ErrorCode.file_not_found, OUTSIDE)
    for d in ("/root", "/tmp", "/tmp/a-proc"):
        with contextlib.suppress(HutchError):
            assert tag not in str(await client.list_files(b, d))
