"""Connection settings come from arguments first, then HUTCH_* variables, then defaults."""

from __future__ import annotations

import pytest

from hutch.sdk.config import DEFAULT_API_URL, ConnectionConfig, RetryPolicy


def test_defaults_without_environment() -> None:
    cfg = ConnectionConfig.resolve(environ={})
    assert cfg.api_url == DEFAULT_API_URL and cfg.api_key is None
    assert "Authorization" not in cfg.headers()


def test_environment_is_read() -> None:
    env = {
        "HUTCH_API_URL": "https://hutch.example/",
        "HUTCH_API_KEY": "sk_test_x",
        "HUTCH_REQUEST_TIMEOUT": "5",
    }
    cfg = ConnectionConfig.resolve(environ=env)
    assert cfg.api_url == "https://hutch.example"
    assert cfg.headers()["Authorization"] == "Bearer sk_test_x"
    assert cfg.request_timeout == 5.0


def test_arguments_win_over_environment() -> None:
    env = {"HUTCH_API_URL": "http://a:1", "HUTCH_API_KEY": "env"}
    cfg = ConnectionConfig.resolve("http://b:2", "arg", 9, environ=env)
    assert (cfg.api_url, cfg.api_key, cfg.request_timeout) == ("http://b:2", "arg", 9)


def test_process_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_API_KEY", "sk_live_env")
    assert ConnectionConfig.resolve().api_key == "sk_live_env"


@pytest.mark.parametrize("env", [{"HUTCH_API_URL": "ftp://x"}, {"HUTCH_REQUEST_TIMEOUT": "soon"}])
def test_bad_settings_say_what_is_allowed(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"http://|seconds"):
        ConnectionConfig.resolve(environ=env)


def test_websocket_urls() -> None:
    assert ConnectionConfig("http://h:1").ws_url("/v1/x") == "ws://h:1/v1/x"
    assert ConnectionConfig("https://h/base").ws_url("/v1/x") == "wss://h/base/v1/x"


def test_backoff_grows_and_is_capped() -> None:
    p = RetryPolicy(attempts=5, backoff_s=0.5, max_backoff_s=1.5)
    assert [p.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
    assert p.delay(1, retry_after=0.2) == 0.2
    assert p.delay(1, retry_after=60) == 1.5


def test_key_is_trimmed_and_checked_without_being_echoed() -> None:
    assert ConnectionConfig.resolve(api_key=" sk_live_abc\n", environ={}).api_key == "sk_live_abc"
    assert ConnectionConfig.resolve(environ={"HUTCH_API_KEY": "  "}).api_key is None
    with pytest.raises(ValueError, match="HUTCH_API_KEY") as e:
        ConnectionConfig.resolve(api_key="sk_live_SECRET part", environ={})
    assert "SECRET" not in str(e.value)
