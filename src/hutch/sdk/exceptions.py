"""Typed exceptions: one class per stable error `code`, all subclassing `HutchSDKError`."""

from __future__ import annotations

import json
from typing import Any

from hutch.models.common import ErrorCode

__all__ = [
    "ERROR_CLASSES",
    "APIConnectionError",
    "AccountErasedError",
    "AccountRestrictedError",
    "AccountSuspendedError",
    "AuthenticationError",
    "CapacityExhaustedError",
    "CommandTimeoutError",
    "ConflictError",
    "DirectoryNotEmptyError",
    "DiskFullError",
    "ExecFailedError",
    "FileError",
    "HutchSDKError",
    "HutchTimeoutError",
    "IdempotencyConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "IsolationUnavailableError",
    "KeyExpiredError",
    "KeyRevokedError",
    "NotFoundError",
    "PathOutsideSandboxError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "ProcessNotFoundError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestTimeoutError",
    "RunnerUnavailableError",
    "SandboxFileExistsError",
    "SandboxFileNotFoundError",
    "SandboxIsADirectoryError",
    "SandboxNotADirectoryError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SecretsUnavailableError",
    "ServiceUnavailableError",
    "TemplateNotFoundError",
    "TemplateNotReadyError",
    "error_class",
    "error_from_frame",
    "error_from_problem",
]


class HutchSDKError(Exception):
    """Base of every SDK error; `code` is the server's stable error code (None if it sent none)."""

    default_code: ErrorCode | None = None

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        problem: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or (self.default_code.value if self.default_code else None)
        self.status = status
        self.errors = errors or []
        self.problem = problem or {}
        self.headers = headers or {}

    def __str__(self) -> str:
        return f"{self.detail} ({self.code})" if self.code else self.detail


class APIConnectionError(HutchSDKError):
    """The API could not be reached (refused, reset, DNS) even after retries."""


class HutchTimeoutError(HutchSDKError):
    """Something took longer than allowed."""


class RequestTimeoutError(HutchTimeoutError):
    """The HTTP request timed out on the client side; raise `request_timeout` if needed."""


class CommandTimeoutError(HutchTimeoutError):
    """The command ran past its `timeout` and was killed; `.result` holds what it printed."""

    default_code = ErrorCode.command_timeout

    def __init__(self, detail: str, *, result: Any = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.result = result


class InvalidRequestError(HutchSDKError, ValueError):
    """The request was refused as invalid (by the server, or by the SDK before sending it);
    `.errors` lists the fields at fault and what they allow."""

    default_code = ErrorCode.invalid_request

    def __str__(self) -> str:
        base = super().__str__()
        if not self.errors:
            return base
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}" for e in self.errors
        )
        return f"{base}: {fields}"


class AuthenticationError(HutchSDKError):
    """No API key, or an unknown one."""

    default_code = ErrorCode.unauthenticated


class KeyRevokedError(AuthenticationError):
    """The API key was revoked."""

    default_code = ErrorCode.key_revoked


class KeyExpiredError(AuthenticationError):
    """The API key expired (e.g. its rotation grace period ended)."""

    default_code = ErrorCode.key_expired


class AccountErasedError(AuthenticationError):
    """The account owning the key asked to be erased; its access ended at once."""

    default_code = ErrorCode.account_erased


class PermissionDeniedError(HutchSDKError):
    """The key lacks the scope or role for this action."""

    default_code = ErrorCode.forbidden


class AccountRestrictedError(PermissionDeniedError):
    """The account is restricted (e.g. erasure requested or processing restricted)."""

    default_code = ErrorCode.account_restricted


class AccountSuspendedError(PermissionDeniedError):
    """An administrator suspended or terminated the account (or its team)."""

    default_code = ErrorCode.account_suspended


class NotFoundError(HutchSDKError):
    """The resource does not exist (or belongs to someone else)."""

    default_code = ErrorCode.not_found


class SandboxNotFoundError(NotFoundError):
    """No such sandbox."""

    default_code = ErrorCode.sandbox_not_found


class TemplateNotFoundError(NotFoundError):
    """No such template."""

    default_code = ErrorCode.template_not_found


class SandboxFileNotFoundError(NotFoundError):
    """No such file or directory inside the sandbox."""

    default_code = ErrorCode.file_not_found


class ProcessNotFoundError(NotFoundError):
    """No such process in the sandbox."""

    default_code = ErrorCode.process_not_found


class ConflictError(HutchSDKError):
    """The request conflicts with the current state."""

    default_code = ErrorCode.conflict


class SandboxNotRunningError(ConflictError):
    """The sandbox exists but is no longer (or not yet) running."""

    default_code = ErrorCode.sandbox_not_running


class TemplateNotReadyError(ConflictError):
    """The template exists but is still being built."""

    default_code = ErrorCode.template_not_ready


class SandboxFileExistsError(ConflictError):
    """The destination path already exists."""

    default_code = ErrorCode.file_exists


class DirectoryNotEmptyError(ConflictError):
    """The directory is not empty (remove it with `recursive=True`)."""

    default_code = ErrorCode.directory_not_empty


class IdempotencyConflictError(ConflictError):
    """The Idempotency-Key was already used for a different request."""

    default_code = ErrorCode.idempotency_conflict


class FileError(HutchSDKError):
    """A file operation inside the sandbox failed."""

    default_code = ErrorCode.file_error


class PathOutsideSandboxError(FileError):
    """The path leads outside the sandbox's file system."""

    default_code = ErrorCode.path_outside_sandbox


class SandboxNotADirectoryError(FileError):
    """A directory was expected."""

    default_code = ErrorCode.not_a_directory


class SandboxIsADirectoryError(FileError):
    """A file was expected, the path is a directory."""

    default_code = ErrorCode.is_a_directory


class DiskFullError(FileError):
    """The sandbox's disk quota is used up."""

    default_code = ErrorCode.disk_full


class ExecFailedError(HutchSDKError):
    """The command could not be started (e.g. no such executable)."""

    default_code = ErrorCode.exec_failed


class RateLimitError(HutchSDKError):
    """Too many requests; wait `retry_after` seconds (None if the server did not say)."""

    default_code = ErrorCode.rate_limited

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait, from the Retry-After header."""
        raw = {k.lower(): v for k, v in self.headers.items()}.get("retry-after")
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


class QuotaExceededError(RateLimitError):
    """A quota (e.g. concurrent sandboxes) is used up."""

    default_code = ErrorCode.quota_exceeded


class PaymentRequiredError(HutchSDKError):
    """Credit is used up and no payment method is on file."""

    default_code = ErrorCode.payment_required


class WebhookSignatureError(InvalidRequestError):
    """A payment-processor webhook did not carry a valid signature."""

    default_code = ErrorCode.webhook_signature_invalid


class IsolationUnavailableError(HutchSDKError):
    """The requested isolation class is not available on this installation."""

    default_code = ErrorCode.isolation_unavailable


class PortsUnsupportedError(HutchSDKError):
    """The sandbox's isolation class cannot expose ports."""

    default_code = ErrorCode.ports_unsupported


class TokenInvalidError(PermissionDeniedError):
    """A port access token is forged or made for another sandbox or port."""

    default_code = ErrorCode.token_invalid


class TokenExpiredError(AuthenticationError):
    """A port access token is past its expiry."""

    default_code = ErrorCode.token_expired


class ServiceUnavailableError(HutchSDKError):
    """The service cannot take the request right now; trying again later may work."""


class CapacityExhaustedError(ServiceUnavailableError):
    """No runner has room for another sandbox right now."""

    default_code = ErrorCode.capacity_exhausted


class SecretsUnavailableError(ServiceUnavailableError):
    """The key-encryption-key provider (local key file, Vault, KMS) could not be used."""

    default_code = ErrorCode.secrets_unavailable


class RunnerUnavailableError(ServiceUnavailableError):
    """The runner behind the API is not reachable."""

    default_code = ErrorCode.runner_unavailable


class BillingUnavailableError(ServiceUnavailableError):
    """The payment processor did not answer; try again later."""

    default_code = ErrorCode.billing_unavailable


class PortUnreachableError(ServiceUnavailableError):
    """Nothing accepts connections on the sandbox port (502)."""

    default_code = ErrorCode.port_unreachable


class InternalServerError(HutchSDKError):
    """The server failed unexpectedly."""

    default_code = ErrorCode.internal


def _by_code() -> dict[str, type[HutchSDKError]]:
    classes: list[type[HutchSDKError]] = []
    todo: list[type[HutchSDKError]] = [HutchSDKError]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    return {c.default_code.value: c for c in classes if c.default_code is not None}


# Built once from the class tree; read-only afterwards.
ERROR_CLASSES: dict[str, type[HutchSDKError]] = _by_code()

_BY_STATUS: dict[int, type[HutchSDKError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
    409: ConflictError,
    422: InvalidRequestError,
    429: RateLimitError,
    500: InternalServerError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}


def error_class(code: str | None, status: int | None) -> type[HutchSDKError]:
    """The exception class for a problem: by `code`, else by HTTP status, else the base."""
    if code and code in ERROR_CLASSES:
        return ERROR_CLASSES[code]
    if status is not None:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        if status >= 500:
            return InternalServerError
    return HutchSDKError


def error_from_problem(
    status: int, body: bytes | str | dict[str, Any] | None, headers: dict[str, str] | None = None
) -> HutchSDKError:
    """Turn an error response (problem+json or anything else) into a typed exception."""
    problem: dict[str, Any] = {}
    if isinstance(body, dict):
        problem = body
    elif body:
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                problem = parsed
        except (ValueError, UnicodeDecodeError):
            problem = {}
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    detail = problem.get("detail") or problem.get("title")
    if not detail:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        detail = (text or "").strip()[:300] if isinstance(text, str) else ""
        detail = detail or f"HTTP {status}"
    errors = problem.get("errors") if isinstance(problem.get("errors"), list) else None
    cls = error_class(code, status)
    return cls(
        str(detail), code=code, status=status, errors=errors, problem=problem, headers=headers
    )


def error_from_frame(code: str, detail: str) -> HutchSDKError:
    """Turn a streaming ErrorFrame into the same typed exception an HTTP problem would give."""
    cls = error_class(code, None)
    return cls(detail, code=code)
