"""Error responses become typed exceptions chosen by the problem's stable `code`."""

from __future__ import annotations

import json

import pytest

from hutch.models.common import ERROR_STATUS, ErrorCode, HutchError
from hutch.sdk import exceptions as ex
from hutch.sdk.types import CommandExitException, CommandResult, check_result


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_has_its_own_class(code: ErrorCode) -> None:
    body = HutchError(code, "went wrong").problem().model_dump_json()
    err = ex.error_from_problem(ERROR_STATUS[code], body)
    assert type(err).default_code == code
    assert isinstance(err, ex.HutchSDKError)
    assert (err.code, err.status, err.detail) == (code.value, ERROR_STATUS[code], "went wrong")


def test_field_errors_are_kept_and_shown() -> None:
    errors = [{"loc": ["body", "vcpu"], "msg": "must be at most 16"}]
    body = HutchError(ErrorCode.invalid_request, "bad input", errors=errors).problem()
    err = ex.error_from_problem(422, body.model_dump_json())
    assert isinstance(err, ex.InvalidRequestError)
    assert err.errors == errors
    assert "body.vcpu: must be at most 16" in str(err)


def test_hierarchy_lets_callers_catch_broadly() -> None:
    assert issubclass(ex.SandboxNotFoundError, ex.NotFoundError)
    assert issubclass(ex.KeyRevokedError, ex.AuthenticationError)
    assert issubclass(ex.CapacityExhaustedError, ex.ServiceUnavailableError)
    assert issubclass(ex.CommandTimeoutError, ex.HutchTimeoutError)
    assert issubclass(ex.DiskFullError, ex.FileError)


def test_rate_limit_reads_retry_after() -> None:
    body = json.dumps({"title": "rate limited", "status": 429, "code": "rate_limited"})
    err = ex.error_from_problem(429, body, {"Retry-After": "7"})
    assert isinstance(err, ex.RateLimitError)
    assert err.retry_after == 7.0
    assert ex.error_from_problem(429, body).retry_after is None  # type: ignore[attr-defined]


def test_unknown_code_falls_back_to_status() -> None:
    body = json.dumps({"title": "x", "status": 404, "code": "brand_new_code", "detail": "gone"})
    err = ex.error_from_problem(404, body)
    assert type(err) is ex.NotFoundError
    assert err.code == "brand_new_code"


def test_non_problem_bodies_still_map() -> None:
    err = ex.error_from_problem(502, b"<html>Bad Gateway</html>")
    assert isinstance(err, ex.ServiceUnavailableError)
    assert "Bad Gateway" in err.detail
    err = ex.error_from_problem(500, b"")
    assert isinstance(err, ex.InternalServerError) and err.detail == "HTTP 500"
    assert type(ex.error_from_problem(418, b"teapot")) is ex.HutchSDKError


def test_stream_error_frames_map_like_problems() -> None:
    err = ex.error_from_frame("process_not_found", "no pid 7")
    assert isinstance(err, ex.ProcessNotFoundError) and err.detail == "no pid 7"


def test_non_zero_exit_raises_with_the_result() -> None:
    r = CommandResult(stdout="o", stderr="boom", exit_code=2)
    with pytest.raises(CommandExitException) as e:
        check_result(r)
    assert (e.value.exit_code, e.value.stdout, e.value.stderr) == (2, "o", "boom")
    assert e.value.result is r and "boom" in str(e.value)
    ok = CommandResult(stdout="", stderr="", exit_code=0)
    assert check_result(ok) is ok


def test_timed_out_command_raises_timeout() -> None:
    r = CommandResult(stdout="", stderr="", exit_code=137, signal=9, timed_out=True)
    with pytest.raises(ex.CommandTimeoutError) as e:
        check_result(r)
    assert e.value.result is r
