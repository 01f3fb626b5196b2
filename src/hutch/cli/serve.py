"""`hutch serve`: the runner (unless told to use an existing one), the base template, the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError

from hutch.api.logging import configure_logging
from hutch.api.settings import ApiSettings
from hutch.api.tls import server_context

RUNNER_READY_TIMEOUT_S = 120.0


class RunnerStartError(RuntimeError):
    """The runner did not come up; the message says why."""


class _Stop(Exception):
    """SIGTERM or SIGINT: unwind so the runner is stopped too."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def runner_healthy(socket_path: Path) -> bool:
    """Whether a runner answers `GET /v1/health` on `socket_path`."""
    if not socket_path.exists():
        return False
    try:
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, timeout=2.0) as c:
            return c.get("http://runner/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


def start_runner(
    command: list[str], socket_path: Path, timeout_s: float = RUNNER_READY_TIMEOUT_S
) -> subprocess.Popen[bytes]:
    """Start the runner and wait until it is healthy; raise RunnerStartError if it is not."""
    try:
        proc = subprocess.Popen(command)  # its output goes to our terminal, as is
    except OSError as e:
        raise RunnerStartError(f"could not start the runner ({command[0]}): {e}") from e
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise RunnerStartError(f"the runner exited with status {code} before it was ready")
            if runner_healthy(socket_path):
                return proc
            time.sleep(0.1)
        raise RunnerStartError(
            f"the runner did not answer on {socket_path} within {timeout_s:.0f} s"
        )
    except BaseException:  # including a stop signal while waiting: never leave it behind
        stop_process(proc)
        raise


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after `grace_s`; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _ensure_base_template(data_dir: Path) -> None:
    """Build the base template on first start, with a progress bar (cached afterwards)."""
    from hutch.config import RunnerSettings
    from hutch.runtime.templates import TemplateStore
    from hutch.runtime.templates.progress import rich_progress

    store = TemplateStore(RunnerSettings(data_dir=data_dir).templates_path())
    with rich_progress() as progress:
        store.ensure("base", progress=progress)


def _serve_api(settings: ApiSettings) -> bool:
    """Migrate, bootstrap on first start, then run uvicorn until told to stop."""
    import uvicorn

    from hutch.api.app import create_app
    from hutch.db.session import Database
    from hutch.services.accounts import AccountService
    from hutch.services.bootstrap import ensure_admin
    from hutch.services.clock import SystemClock
    from hutch.services.keys import KeyService, load_pepper
    from hutch.services.runner_port import connect_runner

    db = Database(settings.db_url())
    db.migrate()
    clock = SystemClock()
    pepper = settings.key_pepper.get_secret_value() if settings.key_pepper else None
    keys = KeyService(load_pepper(settings.data_dir, pepper), clock)
    key_file = ensure_admin(db, AccountService(clock), keys, settings.data_dir)
    if key_file is not None:
        typer.echo(f"created the admin user; its API key is in {key_file} (mode 0600)")
    runner = connect_runner(settings.runner_socket_path())
    app = create_app(settings, runner=runner, clock=clock, database=db)
    tls: dict[str, Any] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        cert, key, only13 = settings.tls_cert, settings.tls_key, settings.tls13_only
        tls = {
            "ssl_certfile": str(cert),
            "ssl_keyfile": str(key),
            "ssl_context_factory": lambda _cfg, _default: server_context(
                cert, key, tls13_only=only13
            ),
        }
    scheme = "https" if tls else "http"
    typer.echo(f"Hutch API on {scheme}://{settings.host}:{settings.port} (docs at /docs)")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # configure_logging already sends uvicorn's records as JSON
        access_log=False,  # its access lines carry raw paths and queries; ours do not
        lifespan="on",
        **tls,
    )
    server = uvicorn.Server(config)
    server.run()
    return server.started


def serve(
    data_dir: Annotated[Path, typer.Option(help="Where Hutch keeps its state")] = Path(
        "/var/lib/hutch"
    ),
    host: Annotated[str, typer.Option(help="Address the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on")] = 8787,
    no_runner: Annotated[
        bool, typer.Option("--no-runner", help="Do not start a runner; use an existing one")
    ] = False,
    runner_socket: Annotated[
        Path | None, typer.Option(help="Socket of an existing runner (implies --no-runner)")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (HUTCH_LOG_LEVEL)")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: serve HTTPS (HUTCH_TLS_CERT)")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="PEM private key of --tls-cert (HUTCH_TLS_KEY)")
    ] = None,
    tls13_only: Annotated[
        bool, typer.Option("--tls13-only", help="Accept TLS 1.3 only (HUTCH_TLS13_ONLY)")
    ] = False,
) -> None:
    """Start the runner and the API server (SQLite in DATA_DIR unless HUTCH_DATABASE_URL)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    given: dict[str, Any] = {"tls_cert": tls_cert, "tls_key": tls_key, "log_level": log_level}
    if tls13_only:
        given["tls13_only"] = True
    try:
        settings = ApiSettings(
            data_dir=data_dir,
            host=host,
            port=port,
            runner_socket=runner_socket,
            **{k: v for k, v in given.items() if v is not None},
        )
        if settings.tls_cert is not None and settings.tls_key is not None:
            server_context(settings.tls_cert, settings.tls_key, tls13_only=settings.tls13_only)
    except (ValidationError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    os.environ["HUTCH_LOG_LEVEL"] = settings.log_level  # the runner we start logs at it too
    proc: subprocess.Popen[bytes] | None = None
    # uvicorn handles these while it serves, then re-raises them once it has shut down; with
    # this handler that re-raise (or a signal during start-up) unwinds through `finally` below.
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = True
    try:
        if not no_runner and runner_socket is None:
            socket_path = settings.runner_socket_path()
            typer.echo(f"starting the runner (socket {socket_path})")
            cmd = [sys.executable, "-m", "hutch.runner", "--data-dir", str(data_dir)]
            try:
                proc = start_runner(cmd, socket_path)
            except RunnerStartError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(1) from None
            _ensure_base_template(data_dir)
        started = _serve_api(settings)
    except _Stop:
        pass  # a clean shutdown
    finally:
        if proc is not None:
            typer.echo("stopping the runner")
            stop_process(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not started:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach `hutch serve`."""
    app.command("serve")(serve)
