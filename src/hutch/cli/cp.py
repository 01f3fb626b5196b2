"""`hutch sandbox cp`: copy one file between the host and a sandbox (`SBX:/path`), streamed
in chunks with a progress bar for big files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hutch.cli import _common as c
from hutch.sdk import Sandbox
from hutch.sdk._files import CHUNK

PROGRESS_MIN_BYTES = 8 * 1024 * 1024


def _progress(enabled: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=c.err_console(),
        disable=not enabled,
        transient=False,
    )


def _chunks(f: IO[bytes], progress: Progress, task: TaskID) -> Iterator[bytes]:
    """Read the file in chunks, advancing the progress bar as each one is sent."""
    while chunk := f.read(CHUNK):
        progress.advance(task, len(chunk))
        yield chunk


def upload(sb: Sandbox, src: Path, dst: str, show: bool) -> dict[str, Any]:
    """Host file → sandbox path (a trailing '/' means into that directory)."""
    if src.is_dir():
        raise typer.BadParameter(f"{src} is a directory; cp copies single files", param_hint="SRC")
    if dst.endswith("/"):
        dst = dst + src.name
    size = src.stat().st_size
    with src.open("rb") as f, _progress(show and size >= PROGRESS_MIN_BYTES) as p:
        task = p.add_task(f"→ {dst}", total=size)
        info = sb.files.write(dst, _chunks(f, p, task))
    return {"src": str(src), "dst": f"{sb.sandbox_id}:{info.path}", "bytes": info.size}


def download(sb: Sandbox, src: str, dst: Path, show: bool) -> dict[str, Any]:
    """Sandbox path → host file (written beside, then renamed, so no half file is left)."""
    if dst.is_dir():
        dst = dst / PurePosixPath(src).name
    tmp = dst.with_name(f".{dst.name}.hutch-part")
    n = 0
    try:
        with sb.files.read(src, format="stream") as stream, tmp.open("wb") as out:
            total = stream.size
            with _progress(show and (total or 0) >= PROGRESS_MIN_BYTES) as p:
                task = p.add_task(f"← {dst.name}", total=total)
                for chunk in stream:
                    out.write(chunk)
                    n += len(chunk)
                    p.advance(task, len(chunk))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"src": f"{sb.sandbox_id}:{src}", "dst": str(dst), "bytes": n}


@c.handle_errors
def cp(
    src: Annotated[str, typer.Argument(help="Host path or SBX:/path.")],
    dst: Annotated[str, typer.Argument(help="Host path or SBX:/path.")],
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Copy a file into or out of a sandbox, e.g. `cp data.csv sbx_…:/home/user/`."""
    a, b = c.parse_location(src), c.parse_location(dst)
    if a.remote == b.remote:
        raise typer.BadParameter(
            "exactly one of SRC and DST must be a sandbox path (SBX:/path)", param_hint="cp"
        )
    remote = a if a.remote else b
    assert remote.sandbox_id is not None
    cfg = c.config(api_url, api_key)
    sb = Sandbox.connect(
        remote.sandbox_id,
        api_url=cfg.api_url,
        api_key=cfg.api_key,
        request_timeout=cfg.request_timeout,
    )
    show = not json_out
    try:
        if b.remote:
            done = upload(sb, Path(a.path), b.path, show)
        else:
            done = download(sb, a.path, Path(b.path), show)
    finally:
        sb.close()
    if json_out:
        c.print_json(done)
    else:
        c.err_console().print(f"{done['src']} → {done['dst']} ({done['bytes']} bytes)")
