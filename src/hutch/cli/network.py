"""`hutch sandbox network`: show or replace a sandbox's egress policy, and the rule options
`hutch sandbox create` shares."""

from __future__ import annotations

from typing import Annotated

import typer

from hutch.cli import _common as c
from hutch.models.network import NetworkPolicy
from hutch.sdk import Sandbox

AllowDomain = Annotated[
    list[str] | None,
    typer.Option("--allow-domain", help="Reachable name over HTTP/HTTPS (exact or *.suffix)."),
]
AllowCidr = Annotated[
    list[str] | None, typer.Option("--allow-cidr", help="Reachable IPv4 network (a.b.c.d/n).")
]
DenyDomain = Annotated[list[str] | None, typer.Option("--deny-domain", help="Refused name.")]
DenyCidr = Annotated[list[str] | None, typer.Option("--deny-cidr", help="Refused network.")]
AllowPublic = Annotated[
    bool,
    typer.Option("--allow-public", help="Every public address (private ranges stay blocked)."),
]


def policy_from(
    allow_domain: list[str] | None,
    allow_cidr: list[str] | None,
    deny_domain: list[str] | None,
    deny_cidr: list[str] | None,
    allow_public: bool,
) -> NetworkPolicy | None:
    """The policy the options describe; None when no option was given."""
    if not (allow_domain or allow_cidr or deny_domain or deny_cidr or allow_public):
        return None
    return NetworkPolicy(
        allow_domains=list(allow_domain or []),
        allow_cidrs=list(allow_cidr or []),
        deny_domains=list(deny_domain or []),
        deny_cidrs=list(deny_cidr or []),
        allow_public=allow_public,
    )


def _show(policy: NetworkPolicy, json_out: bool) -> None:
    if json_out:
        c.print_json(policy)
        return
    rows = [{"rule": k, "value": v} for k, v in policy.model_dump().items()]
    c.print_table(rows, ("rule", "value"))


@c.handle_errors
def network(
    sandbox_id: Annotated[str, typer.Argument(help="Sandbox id (sbx_…).")],
    allow_domain: AllowDomain = None,
    allow_cidr: AllowCidr = None,
    deny_domain: DenyDomain = None,
    deny_cidr: DenyCidr = None,
    allow_public: AllowPublic = False,
    clear: Annotated[
        bool, typer.Option("--clear", help="Close everything: nothing but loopback.")
    ] = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Show the egress policy, or replace it with the rules given (the whole policy)."""
    policy = policy_from(allow_domain, allow_cidr, deny_domain, deny_cidr, allow_public)
    if clear and policy is not None:
        raise ValueError("--clear cannot be combined with rules")
    cfg = c.config(api_url, api_key)
    sb = Sandbox.connect(
        sandbox_id, api_url=cfg.api_url, api_key=cfg.api_key, request_timeout=cfg.request_timeout
    )
    try:
        if clear:
            policy = NetworkPolicy()
        if policy is None:
            _show(sb.network.get(), json_out)
        else:
            _show(sb.network.update(**policy.model_dump()), json_out)
    finally:
        sb.close()
