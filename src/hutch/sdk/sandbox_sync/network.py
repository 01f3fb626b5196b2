"""`sandbox.network`: the sandbox's egress policy."""

from __future__ import annotations

from hutch.models.network import NetworkPolicy
from hutch.sdk import _ops
from hutch.sdk._http import SyncHttp


class Network:
    """Read and replace what the sandbox may reach. Nothing but loopback by default."""

    def __init__(self, sandbox_id: str, http: SyncHttp) -> None:
        self._id, self._http = sandbox_id, http

    def get(self) -> NetworkPolicy:
        """The current policy (empty: nothing but loopback is reachable)."""
        return self._http.send(_ops.get_network(self._id))

    def update(
        self,
        *,
        allow_domains: list[str] | None = None,
        allow_cidrs: list[str] | None = None,
        deny_domains: list[str] | None = None,
        deny_cidrs: list[str] | None = None,
        allow_public: bool = False,
    ) -> NetworkPolicy:
        """Replace the whole policy. New connections follow it at once; existing ones it no
        longer allows are cut. Domains are exact (`api.example.com`) or `*.example.com`;
        domain rules cover HTTP and HTTPS (ports 80 and 443)."""
        policy = _ops.network_policy(
            allow_domains=allow_domains,
            allow_cidrs=allow_cidrs,
            deny_domains=deny_domains,
            deny_cidrs=deny_cidrs,
            allow_public=allow_public,
        )
        info = self._http.send(_ops.set_network(self._id, policy))
        return info.network or policy
