"""RFC 9457 problem+json for every error: HutchError, validation, unknown routes, crashes."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hutch.models.common import ErrorCode, HutchError, Problem, field_errors

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("hutch.api")

_HTTP_CODES = {
    401: ErrorCode.unauthenticated,
    403: ErrorCode.forbidden,
    404: ErrorCode.not_found,
    409: ErrorCode.conflict,
    429: ErrorCode.rate_limited,
}


def problem_response(err: HutchError, request: Request | None = None) -> JSONResponse:
    """The problem+json response for an error."""
    body = err.problem(instance=request.url.path if request is not None else None)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=err.status,
        headers=err.headers or None,
        media_type=PROBLEM_JSON,
    )


def invalid_response(exc: RequestValidationError, request: Request) -> JSONResponse:
    """422 problem+json naming every bad field and what it allows."""
    errors = field_errors(list(exc.errors()))
    where = ", ".join(e["field"] or "body" for e in errors)
    err = HutchError(ErrorCode.invalid_request, f"the request is not valid: {where}", errors=errors)
    return problem_response(err, request)


def crash_response(exc: Exception, request: Request) -> JSONResponse:
    """500 problem+json for an unexpected failure (logged by type and route only)."""
    log.error("unhandled_error", error=type(exc).__name__, path=_route_of(request))
    err = HutchError(ErrorCode.internal, "internal error; it has been logged")
    return problem_response(err, request)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into problem+json."""

    @app.exception_handler(HutchError)
    async def _hutch(request: Request, exc: HutchError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_response(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.invalid_request)
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs for the API"
        err = HutchError(code, detail, status=exc.status_code, headers=dict(exc.headers or {}))
        return problem_response(err, request)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return crash_response(exc, request)


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "<unmatched>")


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": desc}
    for status, desc in {
        401: "No, malformed, revoked or expired API key",
        403: "The key lacks a permission",
        404: "Not found (or another project's)",
        422: "Invalid request",
    }.items()
}
