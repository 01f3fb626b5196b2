"""`hutch sandbox port`: a sandbox port's access setting and URLs."""

from __future__ import annotations

from typing import Annotated

import typer

from hutch.cli import _common as c
from hutch.models.ports import TOKEN_TTL_DEFAULT_S, TOKEN_TTL_MAX_S
from hutch.sdk import Sandbox


@c.handle_errors
def port(
    sandbox_id: Annotated[str, typer.Argument(help="Sandbox id (sbx_…).")],
    port: Annotated[int, typer.Argument(help="TCP port inside the sandbox.", min=1, max=65535)],
    public: Annotated[
        bool | None,
        typer.Option("--public/--private", help="Open the port to anyone, or close it again."),
    ] = None,
    url: Annotated[
        bool,
        typer.Option("--url", help="Print only a URL: signed with a token unless public."),
    ] = False,
    expires_in: Annotated[
        int, typer.Option(help="Seconds a signed URL stays valid.", min=1, max=TOKEN_TTL_MAX_S)
    ] = TOKEN_TTL_DEFAULT_S,
    routing: Annotated[
        str, typer.Option(help="URL form: host ({port}-{id}.domain) or path (/v1/…/ports/…).")
    ] = "host",
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Show or change whether a sandbox port is public, and print its URLs."""
    if routing not in ("host", "path"):
        raise typer.BadParameter("must be 'host' or 'path'", param_hint="--routing")
    cfg = c.config(api_url, api_key)
    sb = Sandbox.connect(
        sandbox_id, api_url=cfg.api_url, api_key=cfg.api_key, request_timeout=cfg.request_timeout
    )
    try:
        info = sb.set_port_public(port, public) if public is not None else sb.get_port(port)
        link = None
        if url:
            link = sb.get_url(port, signed=not info.public, expires_in=expires_in, routing=routing)
    finally:
        sb.close()
    if link is not None and json_out:
        c.print_json({"url": link})
    elif link is not None:
        typer.echo(link)
    elif json_out:
        c.print_json(info)
    else:
        rows = [{"field": k, "value": v} for k, v in info.model_dump().items()]
        c.print_table(rows, ("field", "value"))
