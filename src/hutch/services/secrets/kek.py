"""Key-encryption-key providers behind one small interface, and the local key file provider.

A provider wraps and unwraps 256-bit data keys; it never sees secret values. Every wrap is bound
to a context (team, project, secret name, version), so a wrapped key moved to another secret
does not unwrap.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
Context = Mapping[str, str]


class KekError(Exception):
    """The provider could not wrap, unwrap or rotate (unreachable, refused, or tampered data).
    Messages never hold key material."""


def canonical(context: Context) -> bytes:
    """The context as canonical JSON bytes (sorted keys, no spaces)."""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


class KekProvider(ABC):
    """Wraps data keys under a key-encryption key that may have several versions."""

    @abstractmethod
    def current_kek_id(self) -> str:
        """Identifier of the KEK version new wraps use (stored beside each wrapped key)."""

    @abstractmethod
    def wrap(self, data_key: bytes, context: Context) -> tuple[str, bytes]:
        """Wrap a data key under the current KEK; returns (kek_id, wrapped bytes)."""

    @abstractmethod
    def unwrap(self, kek_id: str, wrapped: bytes, context: Context) -> bytes:
        """The data key, if `wrapped` was made by `kek_id` for exactly this context."""

    def rewrap(self, kek_id: str, wrapped: bytes, context: Context) -> tuple[str, bytes]:
        """Wrap again under the current KEK (the data key stays in memory only)."""
        return self.wrap(self.unwrap(kek_id, wrapped, context), context)

    def rotate(self) -> str:
        """Make a new KEK version current; returns its id."""
        raise KekError(f"{type(self).__name__} cannot rotate its key from Hutch")


class LocalKeyFile(KekProvider):
    """KEKs in a JSON file (mode 0600) holding every version; the newest wraps new keys.

    The file is created on first use. Rotation writes a new file beside it and renames it over the
    old one, so a crash never leaves a half-written key file.
    """

    PREFIX = "local:v"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._current, self._keys = self._load_or_create()

    def _load_or_create(self) -> tuple[int, dict[int, bytes]]:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._read()
        keys = {1: secrets.token_bytes(KEY_BYTES)}
        with os.fdopen(fd, "w") as f:
            f.write(self._dump(1, keys))
        return 1, keys

    def _read(self) -> tuple[int, dict[int, bytes]]:
        if self.path.stat().st_mode & 0o077:
            raise KekError(f"{self.path} is readable by others; chmod 600 it")
        try:
            doc = json.loads(self.path.read_text())
            keys = {int(v): base64.b64decode(k) for v, k in doc["keys"].items()}
            current = int(doc["current"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise KekError(f"{self.path} is not a valid key file ({type(e).__name__})") from None
        if current not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
            raise KekError(f"{self.path} is not a valid key file (bad key or current version)")
        return current, keys

    @staticmethod
    def _dump(current: int, keys: dict[int, bytes]) -> str:
        return json.dumps(
            {
                "format": "hutch-kek/1",
                "current": current,
                "keys": {str(v): base64.b64encode(k).decode() for v, k in sorted(keys.items())},
            }
        )

    def current_kek_id(self) -> str:
        """`local:vN` of the newest version."""
        with self._lock:
            return f"{self.PREFIX}{self._current}"

    def _key(self, version: int) -> bytes:
        with self._lock:
            if version not in self._keys:
                # Another process may have rotated since this one read the file.
                self._current, self._keys = self._read()
            key = self._keys.get(version)
        if key is None:
            raise KekError(f"the local key file has no KEK version {version}")
        return key

    def wrap(self, data_key: bytes, context: Context) -> tuple[str, bytes]:
        """AES-256-GCM under the newest KEK, with the context and KEK id as associated data."""
        with self._lock:
            version, key = self._current, self._keys[self._current]
        kek_id = f"{self.PREFIX}{version}"
        nonce = secrets.token_bytes(NONCE_BYTES)
        ct = AESGCM(key).encrypt(nonce, data_key, kek_id.encode() + b"\0" + canonical(context))
        return kek_id, nonce + ct

    def unwrap(self, kek_id: str, wrapped: bytes, context: Context) -> bytes:
        """Decrypt a wrapped data key; fails if it was made for another context or KEK."""
        if not kek_id.startswith(self.PREFIX) or not kek_id[len(self.PREFIX) :].isdigit():
            raise KekError(f"{kek_id!r} is not a local KEK id")
        key = self._key(int(kek_id[len(self.PREFIX) :]))
        nonce, ct = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, ct, kek_id.encode() + b"\0" + canonical(context))
        except InvalidTag:
            raise KekError("the wrapped data key does not match its KEK or context") from None

    def rotate(self) -> str:
        """Add a new KEK version and make it current (old versions stay to unwrap)."""
        with self._lock:
            current, keys = self._read()
            current = max(keys) + 1
            keys[current] = secrets.token_bytes(KEY_BYTES)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._dump(current, keys))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._current, self._keys = current, keys
            return f"{self.PREFIX}{current}"
