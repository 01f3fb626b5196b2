"""Envelope encryption of one secret value: a fresh data key per version, wrapped by a KEK."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hutch.services.secrets.kek import KEY_BYTES, NONCE_BYTES, KekError, KekProvider, canonical


@dataclass(frozen=True)
class Sealed:
    """What is stored for one secret version (no plaintext, no bare data key)."""

    kek_id: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes


def context(team_id: str, project_id: str, name: str, version: int) -> dict[str, str]:
    """What a secret's ciphertext and wrapped key are bound to: moved elsewhere, they fail."""
    return {"team": team_id, "project": project_id, "secret": name, "version": str(version)}


def _aad(ctx: dict[str, str]) -> bytes:
    return b"hutch-secret/1\0" + canonical(ctx)


def seal(provider: KekProvider, value: bytes, ctx: dict[str, str]) -> Sealed:
    """Encrypt `value` under a new 256-bit data key (AES-256-GCM), then wrap that key."""
    data_key = secrets.token_bytes(KEY_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, value, _aad(ctx))
    kek_id, wrapped = provider.wrap(data_key, ctx)
    return Sealed(kek_id, wrapped, nonce, ciphertext)


def open_sealed(provider: KekProvider, sealed: Sealed, ctx: dict[str, str]) -> bytes:
    """Unwrap the data key and decrypt; KekError if anything was moved, changed or swapped."""
    data_key = provider.unwrap(sealed.kek_id, sealed.wrapped_key, ctx)
    try:
        return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, _aad(ctx))
    except InvalidTag:
        raise KekError("the ciphertext does not match its data key or context") from None
