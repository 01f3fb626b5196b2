"""TLS for `hutch serve`: a server SSLContext from a certificate chain and key."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path, *, tls13_only: bool = False) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, or only TLS 1.3 when asked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls13_only else ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the TLS certificate {cert} and key {key}: {e}") from None
    return ctx
