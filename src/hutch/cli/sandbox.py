"""`hutch sandbox`: create, ls, info, exec, kill (shell, cp, network and port live in their own
modules)."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from hutch.cli import _common as c
from hutch.cli import network as net
from hutch.models.common import (
    DEFAULT_DISK_MB,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VCPU,
    IsolationClass,
    SandboxState,
)
from hutch.sdk import CommandExitException, CommandResult, Sandbox
from hutch.sdk.exceptions import CommandTimeoutError, HutchSDKError, SandboxNotFoundError

app = typer.Typer(help="Create, inspect, use and kill sandboxes.", no_args_is_help=True)

SandboxId = Annotated[str, typer.Argument(help="Sandbox id (sbx_…).")]
LIST_COLUMNS = (
    "sandbox_id",
    "state",
    "template",
    "isolation",
    "vcpu",
    "memory_mb",
    "created_at",
    "expires_at",
    "metadata",
)
EXIT_TIMEOUT = 124  # what timeout(1) returns, so shell scripts can tell
EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C
STDIN_CHUNK = 64 * 1024


def _connect(sandbox_id: str, api_url: str | None, api_key: str | None) -> Sandbox:
    cfg = c.config(api_url, api_key)
    return Sandbox.connect(
        sandbox_id, api_url=cfg.api_url, api_key=cfg.api_key, request_timeout=cfg.request_timeout
    )


@app.command()
@c.handle_errors
def create(
    template: Annotated[str, typer.Option(help="Template to start from.")] = "base",
    timeout: Annotated[int, typer.Option(help="Lifetime in seconds.")] = DEFAULT_TIMEOUT_S,
    vcpu: Annotated[int, typer.Option(help="Virtual CPUs.")] = DEFAULT_VCPU,
    memory_mb: Annotated[int, typer.Option(help="Memory in MiB.")] = DEFAULT_MEMORY_MB,
    disk_mb: Annotated[int, typer.Option(help="Disk in MiB.")] = DEFAULT_DISK_MB,
    isolation: Annotated[IsolationClass, typer.Option(help="Isolation class.")] = (
        IsolationClass.namespace
    ),
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE")] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE")] = (
        None
    ),
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", "-s", help="Project secret as env: NAME or ENV_NAME=NAME"),
    ] = None,
    allow_domain: net.AllowDomain = None,
    allow_cidr: net.AllowCidr = None,
    deny_domain: net.DenyDomain = None,
    deny_cidr: net.DenyCidr = None,
    allow_public: net.AllowPublic = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Create a sandbox and print its id. Without network options it has no network but
    loopback."""
    envs, meta = c.parse_kv(env, "--env"), c.parse_kv(metadata, "--metadata")
    secrets = {s.partition("=")[0]: s.partition("=")[2] or s for s in secret or []}
    cfg = c.config(api_url, api_key)
    sb = Sandbox.create(
        template,
        timeout,
        vcpu=vcpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        isolation=isolation,
        envs=envs,
        metadata=meta,
        secrets=secrets or None,
        network=net.policy_from(allow_domain, allow_cidr, deny_domain, deny_cidr, allow_public),
        api_url=cfg.api_url,
        api_key=cfg.api_key,
        request_timeout=cfg.request_timeout,
    )
    sb.close()
    if json_out:
        c.print_json(sb.info)
    else:
        typer.echo(sb.sandbox_id)


@app.command("ls")
@c.handle_errors
def list_(
    state: Annotated[SandboxState | None, typer.Option(help="Only this state.")] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE")] = (
        None
    ),
    limit: Annotated[int, typer.Option(help="Show at most this many.", min=1)] = 100,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """List sandboxes."""
    cfg = c.config(api_url, api_key)
    pages = Sandbox.list(
        state=state,
        metadata=c.parse_kv(metadata, "--metadata"),
        limit=min(limit, 100),
        api_url=cfg.api_url,
        api_key=cfg.api_key,
        request_timeout=cfg.request_timeout,
    )
    items = []
    try:
        for item in pages:
            items.append(item)
            if len(items) >= limit:
                break
    finally:
        pages.close()
    if json_out:
        c.print_json(items)
    else:
        c.print_table(items, LIST_COLUMNS)


@app.command()
@c.handle_errors
def info(
    sandbox_id: SandboxId,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Show one sandbox."""
    sb = _connect(sandbox_id, api_url, api_key)
    try:
        data = sb.get_info()
    finally:
        sb.close()
    if json_out:
        c.print_json(data)
    else:
        rows = [{"field": k, "value": v} for k, v in data.model_dump().items()]
        c.print_table(rows, ("field", "value"))


def command_string(cmd: list[str]) -> str:
    """One argument is a shell command line as typed; several are quoted into one. A leading
    `--` (the usual end-of-options marker) is not part of the command."""
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise typer.BadParameter("no command given")
    return cmd[0] if len(cmd) == 1 else shlex.join(cmd)


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
@c.handle_errors
def exec(
    sandbox_id: SandboxId,
    cmd: Annotated[list[str], typer.Argument(help="Command (one shell string, or argv).")],
    cwd: Annotated[str | None, typer.Option(help="Working directory.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE")] = None,
    user: Annotated[str, typer.Option(help="user or root.")] = "user",
    timeout: Annotated[float, typer.Option(help="Seconds before it is killed (0: none).")] = 60,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Stream this stdin to the command.")
    ] = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Run a command; its output streams here and its exit code becomes ours. Options go
    before the sandbox id (like `docker exec`); everything after it is the command. Without
    --stdin the command reads end-of-input; Ctrl-C kills it."""
    envs = c.parse_kv(env, "--env")
    sb = _connect(sandbox_id, api_url, api_key)

    def out(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    def err(s: str) -> None:
        sys.stderr.write(s)
        sys.stderr.flush()

    try:
        if stdin:
            result = _run_with_stdin(
                sb, command_string(cmd), envs, cwd, user, timeout, None if json_out else (out, err)
            )
        else:
            result = sb.commands.run(
                command_string(cmd),
                envs=envs,
                cwd=cwd,
                user=user,
                timeout=timeout,
                on_stdout=None if json_out else out,
                on_stderr=None if json_out else err,
            )
    except CommandExitException as e:
        result = e.result
    except CommandTimeoutError as e:
        if json_out:
            c.print_json(e.result)
        else:
            c.err_console().print(f"[red]error:[/red] {e.detail} ({e.code})")
        raise typer.Exit(EXIT_TIMEOUT) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        sb.close()
    if json_out:
        c.print_json(result)
    raise typer.Exit(result.exit_code)


def _run_with_stdin(
    sb: Sandbox,
    cmd: str,
    envs: dict[str, str],
    cwd: str | None,
    user: str,
    timeout: float,
    echo: tuple[Callable[[str], None], Callable[[str], None]] | None,
) -> CommandResult:
    """Run `cmd` with this process's stdin streamed to it as it is read (binary-safe), then
    end-of-input; the command dies if we are interrupted."""
    on_out, on_err = echo or (None, None)
    handle = sb.commands.run(
        cmd,
        background=True,
        envs=envs,
        cwd=cwd,
        user=user,
        timeout=timeout,
        on_stdout=on_out or _discard,
        on_stderr=on_err,
    )
    try:
        # read1: what is there now (a terminal line, a pipe's chunk), not a full buffer.
        read = getattr(sys.stdin.buffer, "read1", sys.stdin.buffer.read)
        try:
            while chunk := read(STDIN_CHUNK):
                if handle.done:
                    break
                handle.send_stdin(chunk)
            if not handle.done:
                handle.close_stdin()
        except HutchSDKError:
            # The command ended while input was still coming (`head -1`) and the stream closed
            # under the write: its result, not the refused write, is the answer (wait() raises
            # if the stream broke for another reason).
            pass
        return handle.wait()
    except BaseException:
        if handle.exit_code is None:
            with contextlib.suppress(Exception):
                handle.kill()
        raise


def _discard(_: str) -> None:
    return None


@app.command()
@c.handle_errors
def kill(
    sandbox_ids: Annotated[list[str], typer.Argument(help="One or more sandbox ids.")],
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Kill sandboxes; their file systems are gone afterwards."""
    results = []
    missing = False
    for sid in sandbox_ids:
        try:
            sb = _connect(sid, api_url, api_key)
        except SandboxNotFoundError:
            results.append({"sandbox_id": sid, "killed": False})
            missing = True
            continue
        try:
            results.append({"sandbox_id": sid, "killed": sb.kill()})
        finally:
            sb.close()
    if json_out:
        c.print_json(results)
    else:
        for r in results:
            typer.echo(f"{r['sandbox_id']}: {'killed' if r['killed'] else 'not found'}")
    if missing:
        raise typer.Exit(c.EXIT_ERROR)


def _attach_more() -> None:
    # `shell` and `cp` live in their own modules to keep this one small.
    from hutch.cli import cp, ports, shell

    app.command("shell")(shell.shell)
    app.command("cp")(cp.cp)
    app.command("network")(net.network)
    app.command("port")(ports.port)


_attach_more()
