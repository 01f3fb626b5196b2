"""End-to-end scenarios written once and run against both `Sandbox` and `AsyncSandbox`.

Each scenario is an async function; `aw()` awaits what the async SDK returns and passes the
sync SDK's plain values through, so the same steps drive both."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hutch.sdk import (
    AsyncSandbox,
    CommandExitException,
    HutchSDKError,
    PtySize,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
)
from hutch.sdk.exceptions import AuthenticationError, SandboxNotRunningError

T = TypeVar("T")
BIG_MB = 50
MAX_PEAK = 16 * 1024 * 1024


async def aw(value: T | Awaitable[T]) -> T:
    """Await async SDK results; return sync ones unchanged."""
    if inspect.isawaitable(value):
        return await value  # type: ignore[no-any-return]
    return value


async def collect(handle: Any) -> list[tuple[str | None, str | None, bytes | None]]:
    """Iterate a command handle's output, sync or async."""
    if hasattr(handle, "__aiter__"):
        return [x async for x in handle]
    return list(handle)


async def poll(check: Callable[[], Any], what: str, deadline_s: float = 20.0) -> Any:
    """Poll `check` until truthy (no fixed sleeps); fail saying what never happened."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = await aw(check())
        if value:
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


Scenario = Callable[[Any, type[Any]], Awaitable[None]]


async def run_commands(sb: Any, cls: type[Any]) -> None:
    """Output, exit codes, env, cwd, stdin, and callbacks that receive output as produced."""
    r = await aw(sb.commands.run("echo out; echo err >&2"))
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)

    with pytest.raises(CommandExitException) as e:
        await aw(sb.commands.run("echo partial; exit 3"))
    assert e.value.exit_code == 3 and e.value.stdout == "partial\n"

    r = await aw(sb.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp"))
    assert r.stdout == "hi\n/tmp\n"
    r = await aw(sb.commands.run("tr a-z A-Z", stdin="shout"))
    assert r.stdout == "SHOUT"
    r = await aw(sb.commands.run(["/bin/sh", "-c", 'echo "$0"', "argv ok"]))
    assert r.stdout == "argv ok\n"
    r = await aw(sb.commands.run("id -u", user="root"))
    assert r.stdout.strip() == "0"

    # The command only finishes after the client reacted to its first line: this can only pass
    # if output reaches the callback while the command is still running.
    got: list[str] = []
    go = f"/tmp/go-{uuid.uuid4().hex}"

    async def on_out(chunk: str) -> None:
        got.append(chunk)
        if "first" in chunk:
            await aw(sb.files.write(go, "go"))

    def on_out_sync(chunk: str) -> None:
        got.append(chunk)
        if "first" in chunk:
            sb.files.write(go, "go")

    cb = on_out if cls is AsyncSandbox else on_out_sync
    r = await aw(
        sb.commands.run(
            f"echo first; while [ ! -f {go} ]; do sleep 0.05; done; echo second",
            on_stdout=cb,
            timeout=30,
        )
    )
    assert r.stdout == "first\nsecond\n" and "".join(got) == r.stdout

    # Streamed or not, a command that reads stdin gets end-of-input (it would hang until its
    # timeout otherwise), and given stdin arrives whole.
    got.clear()
    r = await aw(sb.commands.run("cat; echo done", on_stdout=got.append, timeout=10))
    assert r.stdout == "done\n" and "".join(got) == "done\n"
    r = await aw(sb.commands.run("tr a-z A-Z", stdin="shout", on_stdout=got.append, timeout=10))
    assert r.stdout == "SHOUT"


async def callback_error_kills_the_command(sb: Any, cls: type[Any]) -> None:
    """A callback that raises ends the call and the command with it: nothing keeps running
    in the sandbox for a caller that has gone."""
    tag = uuid.uuid4().hex

    def boom(chunk: str) -> None:
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        await aw(sb.commands.run(f"echo {tag}; exec sleep 600", on_stdout=boom, timeout=700))

    async def sleeper_gone() -> bool:
        procs = await aw(sb.commands.list())
        return not any(p.running and p.cmd[-1].startswith(f"echo {tag}") for p in procs)

    await poll(sleeper_gone, "the command to be killed")


async def files_roundtrip(sb: Any, cls: type[Any]) -> None:
    """Text, bytes, listing, stat, rename, mkdir, remove and the typed not-found error."""
    await aw(sb.files.write("/tmp/dir/a.txt", "héllo\n"))
    assert await aw(sb.files.read("/tmp/dir/a.txt")) == "héllo\n"
    raw = bytes(range(256)) * 4
    await aw(sb.files.write("/tmp/dir/b.bin", raw))
    assert await aw(sb.files.read("/tmp/dir/b.bin", format="bytes")) == raw
    names = {f.name for f in await aw(sb.files.list("/tmp/dir"))}
    assert names == {"a.txt", "b.bin"}
    info = await aw(sb.files.get_info("/tmp/dir/b.bin"))
    assert info.size == len(raw) and info.type == "file"
    await aw(sb.files.rename("/tmp/dir/a.txt", "/tmp/dir/c.txt"))
    assert not await aw(sb.files.exists("/tmp/dir/a.txt"))
    assert await aw(sb.files.exists("/tmp/dir/c.txt"))
    made = await aw(sb.files.make_dir("/tmp/dir/sub/deeper"))
    assert made.type == "dir"
    await aw(sb.files.remove("/tmp/dir"))
    assert not await aw(sb.files.exists("/tmp/dir"))
    with pytest.raises(SandboxFileNotFoundError):
        await aw(sb.files.read("/tmp/dir/c.txt"))
    # What the files API wrote is what commands see, and the other way round.
    await aw(sb.commands.run("printf from-shell > /tmp/shell.txt"))
    assert await aw(sb.files.read("/tmp/shell.txt")) == "from-shell"
    # A relative path is in the user's home, as in a shell there.
    await aw(sb.files.write("notes/rel.txt", "relative"))
    assert (await aw(sb.commands.run("cat notes/rel.txt"))).stdout == "relative"
    assert await aw(sb.files.read("/home/user/notes/rel.txt")) == "relative"


def big_file(path: Path, mb: int = BIG_MB) -> str:
    """Write an incompressible-ish file of `mb` MiB; return its sha256."""
    h = hashlib.sha256()
    block = hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)
    with path.open("wb") as f:
        for i in range(mb):
            chunk = i.to_bytes(4, "big") + block[4:]
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


async def big_file_streamed(sb: Any, cls: type[Any], tmp: Path) -> None:
    """A 50 MB upload from a file object and a streamed download, checked by hash both ways."""
    src = tmp / "big.bin"
    digest = big_file(src)
    tracemalloc.start()
    try:
        with src.open("rb") as f:
            written = await aw(sb.files.write("/tmp/big.bin", f))
        upload_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written.size == BIG_MB * 1024 * 1024
    # Streamed in chunks: the client never held anything close to the whole file.
    assert upload_peak < MAX_PEAK, f"upload peaked at {upload_peak} bytes"
    r = await aw(sb.commands.run("sha256sum /tmp/big.bin"))
    assert r.stdout.split()[0] == digest
    h = hashlib.sha256()
    chunks = 0
    tracemalloc.start()
    try:
        stream = await aw(sb.files.read("/tmp/big.bin", format="stream"))
        if cls is AsyncSandbox:
            async for c in stream:
                h.update(c)
                chunks += 1
        else:
            for c in stream:
                h.update(c)
                chunks += 1
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert h.hexdigest() == digest
    assert download_peak < MAX_PEAK, f"download peaked at {download_peak} bytes"
    assert chunks > 1  # it arrived in pieces, not as one buffer


async def background_and_reconnect(sb: Any, cls: type[Any]) -> None:
    """A background command survives its handle, is listed, and replays output on reconnect;
    stdin can be fed; kill ends it."""
    h = await aw(
        sb.commands.run(
            "for i in 1 2 3; do echo line$i; done; read x; echo got:$x", background=True
        )
    )
    assert h.pid > 0
    assert h.pid in [p.pid for p in await aw(sb.commands.list())]
    await aw(sb.commands.send_stdin(h.pid, "ping\n"))
    again = await aw(sb.commands.connect(h.pid))
    result = await aw(again.wait())
    assert result.stdout == "line1\nline2\nline3\ngot:ping\n"

    sleeper = await aw(sb.commands.run("sleep 600", background=True))
    assert await aw(sb.commands.kill(sleeper.pid)) is True
    with pytest.raises(CommandExitException) as e:
        await aw(sleeper.wait())
    assert e.value.exit_code == 128 + 9

    streamed = await aw(sb.commands.run("echo a; echo b >&2", background=True))
    items = await collect(streamed)
    assert "".join(o for o, _, _ in items if o) == "a\n"
    assert "".join(e for _, e, _ in items if e) == "b\n"


async def pty_session(sb: Any, cls: type[Any]) -> None:
    """A terminal: keystrokes in, output out, resize seen by the shell, exit code back."""
    data = bytearray()
    term = await aw(sb.pty.create(PtySize(cols=80, rows=24), on_data=data.extend))
    await aw(term.send_stdin(b"echo $((6*7))\n"))
    await poll(lambda: b"42" in data, "the shell to answer 42")
    await aw(term.resize(PtySize(cols=100, rows=30)))
    await aw(term.send_stdin(b"stty size\n"))
    await poll(lambda: b"30 100" in data, "stty to report the new size")
    # By pid, as in e2b: through this object's terminal, and from another connection.
    await aw(sb.pty.send_stdin(term.pid, b"echo $((7*7))\n"))
    await poll(lambda: b"49" in data, "the shell to answer 49")
    other = await aw(cls.connect(sb.sandbox_id))
    try:
        await aw(other.pty.resize(term.pid, PtySize(cols=90, rows=20)))
        await aw(other.pty.send_stdin(term.pid, b"stty size\n"))
        await poll(lambda: b"20 90" in data, "stty to report the size set by pid")
    finally:
        await aw(other.close())
    await aw(term.send_stdin(b"exit 5\n"))
    result = await aw(term.wait())
    assert result.exit_code == 5


async def kill_ends_sandbox(sb: Any, cls: type[Any]) -> None:
    """After kill the sandbox is not running and refuses commands with a typed error."""
    assert await aw(sb.is_running())
    stats = await aw(sb.stats())
    assert stats.sandbox_id == sb.sandbox_id and stats.pids >= 0
    assert await aw(sb.kill()) is True
    assert not await aw(sb.is_running())
    with pytest.raises((SandboxNotRunningError, SandboxNotFoundError)):
        await aw(sb.commands.run("true"))


async def list_and_paginate(cls: type[Any]) -> None:
    """Sandboxes filtered by metadata come back across pages, each exactly once."""
    tag = uuid.uuid4().hex
    made = []
    try:
        for _ in range(3):
            made.append(await aw(cls.create(timeout=120, metadata={"suite": tag})))
        pages = cls.list(metadata={"suite": tag}, limit=2)
        first = await aw(pages.next_items())
        assert len(first) == 2 and pages.has_next
        rest = []
        while pages.has_next:
            rest.extend(await aw(pages.next_items()))
        ids = [s.sandbox_id for s in first + rest]
        assert sorted(ids) == sorted(s.sandbox_id for s in made)
        assert all(s.metadata == {"suite": tag} for s in first + rest)
        again = cls.list(metadata={"suite": tag}, state="running")
        if cls is AsyncSandbox:
            listed = [s.sandbox_id async for s in again]
        else:
            listed = [s.sandbox_id for s in again]
        assert sorted(listed) == sorted(ids)
    finally:
        for s in made:
            await aw(s.kill())
            await aw(s.close())


async def typed_errors(cls: type[Any]) -> None:
    """Unknown sandbox and bad key map to their exception classes."""
    with pytest.raises(SandboxNotFoundError) as e:
        await aw(cls.connect("sbx_" + "0" * 26))
    assert e.value.code == "sandbox_not_found" and e.value.status == 404
    with pytest.raises(AuthenticationError) as a:
        await aw(cls.create(api_key="sk_test_notARealKey"))
    assert a.value.status == 401
    assert isinstance(a.value, HutchSDKError)


IN_SANDBOX: dict[str, Scenario] = {
    "commands": run_commands,
    "callback error": callback_error_kills_the_command,
    "files": files_roundtrip,
    "background": background_and_reconnect,
    "pty": pty_session,
    "kill": kill_ends_sandbox,
}
