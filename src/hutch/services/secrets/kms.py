"""AWS KMS as KEK provider (through boto3).

Each wrap is a KMS Encrypt of the data key with an encryption context naming the secret, so KMS
refuses to decrypt it for any other secret. KMS rotates key material itself (old ciphertexts keep
decrypting); moving to another key is a configuration change followed by `hutch secrets rewrap`,
which uses ReEncrypt so the data key never leaves KMS in the clear.
"""

from __future__ import annotations

from typing import Any

from hutch.services.secrets.kek import Context, KekError, KekProvider

PREFIX = "kms:"


class AwsKms(KekProvider):
    """Wraps data keys with a KMS symmetric key."""

    def __init__(
        self,
        key_id: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.key_id = key_id
        self._arn: str | None = None
        if client is None:
            import boto3  # imported here: only deployments using KMS need it
            from botocore.config import Config

            client = boto3.client(
                "kms",
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=10),
            )
        self.client = client

    def _call(self, what: str, fn: Any, **kw: Any) -> dict[str, Any]:
        try:
            out: dict[str, Any] = fn(**kw)
        except Exception as e:
            raise KekError(f"AWS KMS {what} failed ({type(e).__name__})") from None
        return out

    def current_kek_id(self) -> str:
        """`kms:` and the configured key's ARN."""
        if self._arn is None:
            out = self._call("DescribeKey", self.client.describe_key, KeyId=self.key_id)
            self._arn = str(out["KeyMetadata"]["Arn"])
        return PREFIX + self._arn

    def wrap(self, data_key: bytes, context: Context) -> tuple[str, bytes]:
        """KMS Encrypt with the context as encryption context."""
        out = self._call(
            "Encrypt",
            self.client.encrypt,
            KeyId=self.key_id,
            Plaintext=data_key,
            EncryptionContext=dict(context),
        )
        return PREFIX + str(out["KeyId"]), bytes(out["CiphertextBlob"])

    def unwrap(self, kek_id: str, wrapped: bytes, context: Context) -> bytes:
        """KMS Decrypt, pinned to the key that wrapped it and to the context."""
        if not kek_id.startswith(PREFIX):
            raise KekError(f"{kek_id!r} is not a KMS key id")
        out = self._call(
            "Decrypt",
            self.client.decrypt,
            CiphertextBlob=wrapped,
            KeyId=kek_id[len(PREFIX) :],
            EncryptionContext=dict(context),
        )
        return bytes(out["Plaintext"])

    def rewrap(self, kek_id: str, wrapped: bytes, context: Context) -> tuple[str, bytes]:
        """KMS ReEncrypt to the configured key."""
        if not kek_id.startswith(PREFIX):
            raise KekError(f"{kek_id!r} is not a KMS key id")
        out = self._call(
            "ReEncrypt",
            self.client.re_encrypt,
            CiphertextBlob=wrapped,
            SourceKeyId=kek_id[len(PREFIX) :],
            SourceEncryptionContext=dict(context),
            DestinationKeyId=self.key_id,
            DestinationEncryptionContext=dict(context),
        )
        return PREFIX + str(out["KeyId"]), bytes(out["CiphertextBlob"])
