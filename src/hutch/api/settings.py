"""API server settings: the shared `Settings` plus what only the server process needs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from hutch.config import Settings


class ApiSettings(Settings):
    """`HUTCH_*` settings of the API server."""

    key_pepper: SecretStr | None = Field(
        default=None, description="HMAC secret for API keys; default: DATA_DIR/pepper (0600)"
    )
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")

    # Project secrets: which key-encryption-key provider wraps their data keys.
    kek_provider: Literal["local", "vault", "kms"] = Field(
        default="local", description="local key file, HashiCorp Vault transit, or AWS KMS"
    )
    kek_file: Path | None = Field(
        default=None, description="Local KEK file; default: DATA_DIR/kek.json (created 0600)"
    )
    vault_addr: str | None = Field(default=None, description="e.g. https://vault:8200")
    vault_token: SecretStr | None = None
    vault_transit_mount: str = "transit"
    vault_transit_key: str = Field(default="hutch", description="A derived transit key")
    kms_key_id: str | None = Field(default=None, description="KMS key id, ARN or alias")
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    erasure_grace_days: int = Field(
        default=30, ge=0, le=30, description="Days between an erasure and its purge"
    )
