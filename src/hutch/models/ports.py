"""Wire models of exposed sandbox ports: settings, access tokens, URLs."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from hutch.models.common import WireModel

PORT_MIN, PORT_MAX = 1, 65535
TOKEN_TTL_DEFAULT_S = 3600
TOKEN_TTL_MAX_S = 7 * 86400


class PortUpdate(WireModel):
    """`PUT /v1/sandboxes/{id}/ports/{port}`."""

    public: bool = Field(description="Reachable by anyone who knows the URL, without a key")


class PortInfo(WireModel):
    """A sandbox port and where it is reached."""

    sandbox_id: str
    port: int = Field(ge=PORT_MIN, le=PORT_MAX)
    public: bool
    host: str = Field(description="Host-routing name, e.g. 8000-sbx-01j….localhost:8787")
    url: str = Field(description="Host-routed URL of the port's root")
    path_url: str = Field(description="Path-routed URL: /v1/sandboxes/{id}/ports/{port}/")


class PortTokenRequest(WireModel):
    """`POST /v1/sandboxes/{id}/ports/{port}/token`."""

    expires_in: int = Field(
        default=TOKEN_TTL_DEFAULT_S,
        ge=1,
        le=TOKEN_TTL_MAX_S,
        description="Seconds the token stays valid (at most 7 days)",
    )


class PortToken(WireModel):
    """A signed token granting access to one port of one sandbox until it expires."""

    sandbox_id: str
    port: int
    token: str
    expires_at: datetime
    url: str = Field(description="Host-routed URL with the token (`?hutch_token=`)")
    path_url: str = Field(description="Path-routed URL with the token")
