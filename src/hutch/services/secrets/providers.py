"""Build the configured KEK provider."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from hutch.services.secrets.kek import KekProvider, LocalKeyFile

ProviderName = Literal["local", "vault", "kms"]


def build_provider(
    kind: ProviderName,
    *,
    data_dir: Path,
    kek_file: Path | None = None,
    vault_addr: str | None = None,
    vault_token: str | None = None,
    vault_mount: str = "transit",
    vault_key: str = "hutch",
    kms_key_id: str | None = None,
    kms_region: str | None = None,
    kms_endpoint_url: str | None = None,
) -> KekProvider:
    """The provider named by configuration (the local key file is created 0600 if missing)."""
    if kind == "local":
        return LocalKeyFile(kek_file or data_dir / "kek.json")
    if kind == "vault":
        if not vault_addr or not vault_token:
            raise ValueError(
                "HUTCH_KEK_PROVIDER=vault needs HUTCH_VAULT_ADDR and HUTCH_VAULT_TOKEN"
            )
        from hutch.services.secrets.vault import VaultTransit

        return VaultTransit(vault_addr, vault_token, key=vault_key, mount=vault_mount)
    if kind == "kms":
        if not kms_key_id:
            raise ValueError("HUTCH_KEK_PROVIDER=kms needs HUTCH_KMS_KEY_ID")
        from hutch.services.secrets.kms import AwsKms

        return AwsKms(kms_key_id, region=kms_region, endpoint_url=kms_endpoint_url)
    raise ValueError(f"unknown KEK provider {kind!r}; allowed: local, vault, kms")
