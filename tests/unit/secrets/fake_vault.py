"""A minimal Vault transit engine on loopback, for testing the Vault adapter through hvac.

It speaks the transit routes the adapter uses (encrypt, decrypt, rewrap, keys read and rotate) for
one derived AES-GCM key with versions, checks the token, and binds ciphertexts to the context the
way a derived key does (the context selects the key), so a wrong context fails to decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_CT = re.compile(r"^vault:v(\d+):(.+)$")


class TransitKey:
    """Key versions of one transit key."""

    def __init__(self) -> None:
        self.versions: dict[int, bytes] = {1: secrets.token_bytes(32)}

    @property
    def latest(self) -> int:
        return max(self.versions)

    def derived(self, version: int, context: bytes) -> bytes:
        return hmac.new(self.versions[version], context, hashlib.sha256).digest()

    def encrypt(self, plaintext: bytes, context: bytes, version: int | None = None) -> str:
        v = version or self.latest
        nonce = secrets.token_bytes(12)
        ct = AESGCM(self.derived(v, context)).encrypt(nonce, plaintext, None)
        return f"vault:v{v}:" + base64.b64encode(nonce + ct).decode()

    def decrypt(self, ciphertext: str, context: bytes) -> bytes:
        m = _CT.match(ciphertext)
        if m is None or int(m.group(1)) not in self.versions:
            raise ValueError("invalid ciphertext")
        raw = base64.b64decode(m.group(2))
        try:
            return AESGCM(self.derived(int(m.group(1)), context)).decrypt(raw[:12], raw[12:], None)
        except InvalidTag:
            raise ValueError("cipher: message authentication failed") from None


class FakeVault:
    """`with FakeVault() as v:` serves transit at `v.url` with token `v.token`."""

    def __init__(self, mount: str = "transit", key: str = "hutch") -> None:
        self.mount, self.key_name = mount, key
        self.token = "s.test-" + secrets.token_hex(8)
        self.keys = {key: TransitKey()}
        self.calls: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVault:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        prefix = f"/v1/{self.mount}/"
        if not path.startswith(prefix):
            return 404, {"errors": ["no handler for route"]}
        parts = path[len(prefix) :].split("/")
        self.calls.append(f"{method} {'/'.join(parts[:1] + parts[2:])}")
        if len(parts) == 2 and parts[0] in ("encrypt", "decrypt", "rewrap"):
            key = self.keys.get(parts[1])
            if key is None:
                return 400, {"errors": ["encryption key not found"]}
            if not body.get("context"):
                return 400, {"errors": ["missing 'context' for key derivation"]}
            ctx = base64.b64decode(body["context"])
            try:
                if parts[0] == "encrypt":
                    pt = base64.b64decode(body["plaintext"])
                    return 200, {"data": {"ciphertext": key.encrypt(pt, ctx)}}
                pt = key.decrypt(str(body["ciphertext"]), ctx)
            except (ValueError, KeyError):
                return 400, {"errors": ["invalid ciphertext or context"]}
            if parts[0] == "decrypt":
                return 200, {"data": {"plaintext": base64.b64encode(pt).decode()}}
            return 200, {"data": {"ciphertext": key.encrypt(pt, ctx)}}
        if len(parts) in (2, 3) and parts[0] == "keys" and parts[1] in self.keys:
            key = self.keys[parts[1]]
            if len(parts) == 3 and parts[2] == "rotate" and method == "POST":
                key.versions[key.latest + 1] = secrets.token_bytes(32)
                return 204, None
            if len(parts) == 2 and method == "GET":
                return 200, {
                    "data": {
                        "name": parts[1],
                        "type": "aes256-gcm96",
                        "derived": True,
                        "latest_version": key.latest,
                        "keys": {str(v): 0 for v in key.versions},
                    }
                }
        return 404, {"errors": ["no handler for route"]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                if self.headers.get("X-Vault-Token") != vault.token:
                    status, out = 403, {"errors": ["permission denied"]}
                else:
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        body = {}
                    status, out = vault._route(self.command, self.path, body)
                data = b"" if out is None else json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler
