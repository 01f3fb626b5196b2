"""Secrets benchmark: seal and open one value through each KEK provider, against raw AES-GCM.

Local key file, Vault transit (the loopback fake the tests use) and AWS KMS (moto's server on
loopback) behind the same `KekProvider`; the raw primitive is one AES-256-GCM encrypt+decrypt of
the same value in the same run. Run: `.venv/bin/python -m bench.bench_secrets`.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tests.unit.secrets.fake_vault import FakeVault

from bench._common import print_table, save, summary
from hutch.services.secrets.envelope import context, open_sealed, seal
from hutch.services.secrets.kek import KekProvider, LocalKeyFile
from hutch.services.secrets.kms import AwsKms
from hutch.services.secrets.vault import VaultTransit

N = 300
VALUE = secrets.token_bytes(64)


def timed(n: int, fn: Callable[[], object]) -> list[float]:
    """Durations of n calls."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def round_trip(provider: KekProvider) -> Callable[[], object]:
    """Seal then open one value (a fresh data key each time)."""
    ctx = context("team_b", "prj_b", "BENCH", 1)
    return lambda: open_sealed(provider, seal(provider, VALUE, ctx), ctx)


def main() -> None:
    """Measure and print."""
    key, nonce = AESGCM.generate_key(256), os.urandom(12)
    raw = summary(
        "raw AES-256-GCM enc+dec",
        timed(N, lambda: AESGCM(key).decrypt(nonce, AESGCM(key).encrypt(nonce, VALUE, b""), b"")),
    )
    base = float(raw["p50_ms"])  # type: ignore[arg-type]
    rows = [raw]
    with tempfile.TemporaryDirectory() as d:
        rows.append(
            summary("local key file", timed(N, round_trip(LocalKeyFile(Path(d) / "k"))), base)
        )
    with FakeVault() as v:
        rows.append(
            summary(
                "vault transit (fake)", timed(N, round_trip(VaultTransit(v.url, v.token))), base
            )
        )
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        import boto3

        url = f"http://127.0.0.1:{port}"
        kid = boto3.client("kms", region_name="us-east-1", endpoint_url=url).create_key()
        kms = AwsKms(kid["KeyMetadata"]["KeyId"], region="us-east-1", endpoint_url=url)
        rows.append(summary("aws kms (moto)", timed(N // 3, round_trip(kms)), base))
    finally:
        server.stop()
    print_table("secrets: seal + open one 64-byte value", rows)
    save("secrets", rows)


if __name__ == "__main__":
    main()
