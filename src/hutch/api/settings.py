"""API server settings: the shared `Settings` plus what only the server process needs."""

from __future__ import annotations

from pydantic import Field, SecretStr

from hutch.config import Settings


class ApiSettings(Settings):
    """`HUTCH_*` settings of the API server."""

    key_pepper: SecretStr | None = Field(
        default=None, description="HMAC secret for API keys; default: DATA_DIR/pepper (0600)"
    )
    public_domain: str = Field(
        default="localhost",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="Sandbox ports are also served at {port}-sbx-{id}.<public_domain>",
    )
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
