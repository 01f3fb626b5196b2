"""`hutch sandbox shell`: an interactive terminal inside a sandbox."""

from __future__ import annotations

import contextlib
import os
import select
import sys
from typing import Annotated

import typer

from hutch.cli import _common as c
from hutch.cli.terminal import WinchFlag, raw_mode, terminal_size
from hutch.sdk import HutchSDKError, Sandbox

POLL_S = 0.1


@c.handle_errors
def shell(
    sandbox_id: Annotated[str, typer.Argument(help="Sandbox id (sbx_…).")],
    cmd: Annotated[str | None, typer.Option(help="Program instead of a login shell.")] = None,
    cwd: Annotated[str | None, typer.Option(help="Working directory.")] = None,
    user: Annotated[str, typer.Option(help="user or root.")] = "user",
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE")] = None,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
) -> None:
    """Open an interactive terminal in the sandbox (exit the shell to leave)."""
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):  # replaced stdin (e.g. captured) has no descriptor
        fd = -1
    if fd < 0 or not os.isatty(fd):
        c.err_console().print(
            "[red]error:[/red] shell needs a terminal on stdin; use `hutch sandbox exec` in scripts"
        )
        raise typer.Exit(c.EXIT_USAGE)
    envs = c.parse_kv(env, "--env")
    cfg = c.config(api_url, api_key)
    sb = Sandbox.connect(
        sandbox_id, api_url=cfg.api_url, api_key=cfg.api_key, request_timeout=cfg.request_timeout
    )
    out = sys.stdout.buffer

    def on_data(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        term = sb.pty.create(
            terminal_size(fd), on_data=on_data, cmd=cmd, cwd=cwd, envs=envs, user=user
        )
        with raw_mode(fd), WinchFlag().installed() as winch:
            while not term.done:
                if winch.take():
                    with contextlib.suppress(HutchSDKError):  # a resize lost at exit is harmless
                        term.resize(terminal_size(fd))
                ready, _, _ = select.select([fd], [], [], POLL_S)
                if ready:
                    data = os.read(fd, 4096)
                    if not data:  # our stdin closed: nobody is left to type, end the shell
                        term.kill()
                        break
                    try:
                        term.send_stdin(data)
                    except HutchSDKError:
                        if term.done:  # it ended while we were typing: not an error
                            break
                        raise
        result = term.wait()
    finally:
        sb.close()
    raise typer.Exit(result.exit_code)
