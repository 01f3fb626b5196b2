"""API server settings: the shared `Settings` plus what only the server process needs."""

from __future__ import annotations

from pydantic import Field, SecretStr

from hutch.config import Settings


class ApiSettings(Settings):
    """`HUTCH_*` settings of the API server."""

    key_pepper: SecretStr | None = Field(
        default=None, description="HMAC secret for API keys; default: DATA_DIR/pepper (0600)"
    )
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    auth_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long an authenticated key is remembered; changes made through another "
        "API process apply within this time (0 = ask the database on every request)",
    )
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
