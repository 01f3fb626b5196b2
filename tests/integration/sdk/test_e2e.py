"""The SDK against a real server: each scenario runs through `Sandbox` and `AsyncSandbox`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from hutch.sdk import AsyncSandbox, Sandbox
from tests.integration.sdk import scenarios
from tests.integration.sdk.server import Server
from tests.support.interrupt import interrupt_when_started, marked_command, wait_until_gone

pytestmark = pytest.mark.slow
KINDS = [Sandbox, AsyncSandbox]


def _ids(cls: type[Any]) -> str:
    return "async" if cls is AsyncSandbox else "sync"


async def _in_sandbox(cls: type[Any], scenario: scenarios.Scenario) -> None:
    sb = await scenarios.aw(cls.create(timeout=300, metadata={"test": scenario.__name__}))
    try:
        await scenario(sb, cls)
    finally:
        await scenarios.aw(sb.kill())
        await scenarios.aw(sb.close())


@pytest.mark.parametrize("cls", KINDS, ids=_ids)
@pytest.mark.parametrize("name", list(scenarios.IN_SANDBOX))
def test_scenario(api: Server, cls: type[Any], name: str) -> None:
    asyncio.run(_in_sandbox(cls, scenarios.IN_SANDBOX[name]))


@pytest.mark.parametrize("cls", KINDS, ids=_ids)
def test_big_file_is_streamed(api: Server, cls: type[Any], tmp_path: Path) -> None:
    async def scenario(sb: Any, c: type[Any]) -> None:
        await scenarios.big_file_streamed(sb, c, tmp_path)

    asyncio.run(_in_sandbox(cls, scenario))


@pytest.mark.parametrize("cls", KINDS, ids=_ids)
def test_list_and_paginate(api: Server, cls: type[Any]) -> None:
    asyncio.run(scenarios.list_and_paginate(cls))


@pytest.mark.parametrize("cls", KINDS, ids=_ids)
def test_typed_errors(api: Server, cls: type[Any]) -> None:
    asyncio.run(scenarios.typed_errors(cls))


def test_context_manager_kills(api: Server) -> None:
    with Sandbox.create(timeout=60) as sb:
        sid = sb.sandbox_id
        assert sb.commands.run("echo ok").stdout == "ok\n"
    again = Sandbox.connect(sid)
    try:
        assert again.info.state in ("stopping", "stopped")
    finally:
        again.close()


def test_top_level_import(api: Server) -> None:
    import hutch

    assert hutch.Sandbox is Sandbox and hutch.AsyncSandbox is AsyncSandbox


RUN_UNTIL_INTERRUPTED = """
import asyncio, sys
from hutch import AsyncSandbox, Sandbox

async def main_async(sid, cmd):
    sb = await AsyncSandbox.connect(sid)
    await sb.commands.run(cmd, on_stdout=lambda s: print(s, end="", flush=True), timeout=700)

sid, cmd, kind = sys.argv[1:]
if kind == "async":
    asyncio.run(main_async(sid, cmd))
else:
    Sandbox.connect(sid).commands.run(
        cmd, on_stdout=lambda s: print(s, end="", flush=True), timeout=700
    )
"""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ctrl_c_in_a_program_kills_its_command(api: Server, tmp_path: Path, kind: str) -> None:
    """A program stopped with Ctrl-C (KeyboardInterrupt; under asyncio.run, a cancellation
    of everything) takes the command it was running with it."""
    script = tmp_path / "run.py"
    script.write_text(RUN_UNTIL_INTERRUPTED)
    cmd, count = marked_command()
    with Sandbox.create(timeout=300) as sb:
        interrupt_when_started([sys.executable, str(script), sb.sandbox_id, cmd, kind])
        wait_until_gone(lambda: sb.commands.run(count).stdout)
