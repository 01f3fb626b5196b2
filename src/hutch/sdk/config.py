"""Where the SDK connects and with which key: arguments first, then HUTCH_* environment."""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx

from hutch import __version__

DEFAULT_API_URL = "http://127.0.0.1:8787"
DEFAULT_REQUEST_TIMEOUT = 30.0
ENV_API_URL = "HUTCH_API_URL"
ENV_API_KEY = "HUTCH_API_KEY"
_KEY_CHARS = re.compile(r"[A-Za-z0-9_]+")
ENV_REQUEST_TIMEOUT = "HUTCH_REQUEST_TIMEOUT"

_tls_lock = threading.Lock()
_tls_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def tls_context() -> ssl.SSLContext:
    """The client TLS context for https:// and wss:// (certificates verified).

    Built once per process and trust store: building one loads the whole CA bundle, which
    costs tens of milliseconds, and every sandbox handle has its own HTTP client. The trust
    store is httpx's: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle.
    """
    key = (os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None)
    with _tls_lock:
        ctx = _tls_contexts.get(key)
        if ctx is None:
            ctx = _tls_contexts[key] = httpx.create_ssl_context(trust_env=True)
        return ctx


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed idempotent request is tried again."""

    attempts: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 3.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff_s)
        return min(self.backoff_s * (2 ** (attempt - 1)), self.max_backoff_s)


@dataclass(frozen=True)
class ConnectionConfig:
    """Everything needed to reach the API: base URL, key and default request timeout."""

    api_url: str = DEFAULT_API_URL
    api_key: str | None = None
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def resolve(
        cls,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ConnectionConfig:
        """Build a config: explicit arguments win, then HUTCH_* variables, then defaults."""
        env = os.environ if environ is None else environ
        url = api_url or env.get(ENV_API_URL) or DEFAULT_API_URL
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"api_url {url!r} must start with http:// or https://")
        timeout = request_timeout
        if timeout is None and env.get(ENV_REQUEST_TIMEOUT):
            raw = env[ENV_REQUEST_TIMEOUT]
            try:
                timeout = float(raw)
            except ValueError:
                raise ValueError(
                    f"{ENV_REQUEST_TIMEOUT}={raw!r} is not a number of seconds"
                ) from None
        key = (api_key or env.get(ENV_API_KEY) or "").strip() or None
        if key is not None and not _KEY_CHARS.fullmatch(key):
            # Never echo the key: a message lands in logs and tracebacks.
            raise ValueError(
                f"the API key (api_key= or {ENV_API_KEY}) has characters no key has: keys look "
                "like sk_live_… or sk_test_… (letters, digits and underscores)"
            )
        return cls(
            api_url=url.rstrip("/"),
            api_key=key,
            request_timeout=DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout,
        )

    def headers(self) -> dict[str, str]:
        """Headers sent with every request (HTTP and WebSocket handshake)."""
        h = {"User-Agent": f"hutch-python/{__version__}"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def ws_url(self, path: str) -> str:
        """The WebSocket URL of an API path (http→ws, https→wss)."""
        parts = urlsplit(self.api_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))
