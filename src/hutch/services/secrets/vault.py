"""HashiCorp Vault transit as KEK provider (through hvac).

The transit key must be a derived key (`vault write -f transit/keys/hutch derived=true`): the
context Hutch sends with every call is then part of the key, so a wrapped data key only unwraps for
the secret it was made for. Vault keeps every key version; `rotate` makes a new one and `rewrap`
moves ciphertexts to it without Hutch seeing the data key.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from hutch.services.secrets.kek import Context, KekError, KekProvider, canonical

_VERSION_RE = re.compile(r"^vault:v(\d+):")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class VaultTransit(KekProvider):
    """Wraps data keys with a Vault transit key."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        key: str = "hutch",
        mount: str = "transit",
        timeout: float = 10,
    ) -> None:
        import hvac  # imported here: only deployments using Vault need it

        self.key = key
        self.mount = mount
        self.client = hvac.Client(url=url, token=token, timeout=timeout)

    def _call(self, what: str, fn: Any, **kw: Any) -> dict[str, Any]:
        try:
            out = fn(name=self.key, mount_point=self.mount, **kw)
        except Exception as e:
            # The exception text may quote the request; only its type is kept.
            raise KekError(f"Vault transit {what} failed ({type(e).__name__})") from None
        if not isinstance(out, dict) or not isinstance(out.get("data"), dict):
            raise KekError(f"Vault transit {what} gave an unexpected answer")
        data: dict[str, Any] = out["data"]
        return data

    def _kek_id(self, ciphertext: str) -> str:
        m = _VERSION_RE.match(ciphertext)
        if m is None:
            raise KekError("Vault returned a ciphertext without a key version")
        return f"vault:{self.mount}/{self.key}:v{m.group(1)}"

    def current_kek_id(self) -> str:
        """`vault:MOUNT/KEY:vN` of the key's latest version."""
        data = self._call("read key", self.client.secrets.transit.read_key)
        return f"vault:{self.mount}/{self.key}:v{int(data['latest_version'])}"

    def wrap(self, data_key: bytes, context: Context) -> tuple[str, bytes]:
        """transit/encrypt with the context."""
        data = self._call(
            "encrypt",
            self.client.secrets.transit.encrypt_data,
            plaintext=_b64(data_key),
            context=_b64(canonical(context)),
        )
        ct = str(data["ciphertext"])
        return self._kek_id(ct), ct.encode()

    def unwrap(self, kek_id: str, wrapped: bytes, context: Context) -> bytes:
        """transit/decrypt with the context."""
        ct = wrapped.decode()
        if self._kek_id(ct) != kek_id:
            raise KekError("the wrapped data key does not match its KEK id")
        data = self._call(
            "decrypt",
            self.client.secrets.transit.decrypt_data,
            ciphertext=ct,
            context=_b64(canonical(context)),
        )
        try:
            return base64.b64decode(data["plaintext"])
        except (KeyError, ValueError):
            raise KekError("Vault transit decrypt gave an unexpected answer") from None

    def rewrap(self, kek_id: str, wrapped: bytes, context: Context) -> tuple[str, bytes]:
        """transit/rewrap: Vault moves the ciphertext to the latest key version."""
        data = self._call(
            "rewrap",
            self.client.secrets.transit.rewrap_data,
            ciphertext=wrapped.decode(),
            context=_b64(canonical(context)),
        )
        ct = str(data["ciphertext"])
        return self._kek_id(ct), ct.encode()

    def rotate(self) -> str:
        """transit/keys/KEY/rotate: a new key version becomes the latest."""
        try:
            self.client.secrets.transit.rotate_key(name=self.key, mount_point=self.mount)
        except Exception as e:
            raise KekError(f"Vault transit rotate failed ({type(e).__name__})") from None
        return self.current_kek_id()
