"""Requests are built and validated locally, before anything goes on the wire."""

from __future__ import annotations

import uuid

import pytest

from hutch.sdk import _ops
from hutch.sdk._http import _timeout
from hutch.sdk.config import ConnectionConfig
from hutch.sdk.exceptions import InvalidRequestError


def _create(**kw: object) -> _ops.Call[object]:
    args: dict[str, object] = dict(
        template="base",
        timeout=300,
        vcpu=2,
        memory_mb=2048,
        disk_mb=4096,
        isolation="namespace",
        envs={"A": "1"},
        metadata={"team": "x"},
    )
    args.update(kw)
    return _ops.create_sandbox(**args)  # type: ignore[arg-type]


def test_create_body_and_idempotency_key() -> None:
    a, b = _create(), _create()
    assert a.method == "POST" and a.path == "/v1/sandboxes"
    assert a.json == {
        "template": "base",
        "isolation": "namespace",
        "vcpu": 2,
        "memory_mb": 2048,
        "disk_mb": 4096,
        "timeout_s": 300,
        "env": {"A": "1"},
        "metadata": {"team": "x"},
    }
    key_a, key_b = a.headers["Idempotency-Key"], b.headers["Idempotency-Key"]
    assert uuid.UUID(key_a).version == 4 and key_a != key_b
    assert _create(idempotency_key="mine").headers["Idempotency-Key"] == "mine"
    assert a.idempotent  # safe to replay: the key makes the server answer the first result


def test_create_names_secrets_only() -> None:
    assert _create(secrets=["TOKEN"]).json["secrets"] == ["TOKEN"]
    assert _create(secrets={"ENV": "TOKEN"}).json["secrets"] == {"ENV": "TOKEN"}
    assert "secrets" not in _create().json


@pytest.mark.parametrize(
    "bad",
    [
        {"vcpu": 99},
        {"envs": {"1BAD": "x"}},
        {"template": "Bad Name"},
        {"isolation": "vm"},
        {"secrets": ["has space"]},
        {"secrets": {"1ENV": "TOKEN"}},
    ],
)
def test_invalid_create_fails_locally(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        _create(**bad)


def test_list_filters() -> None:
    call = _ops.list_sandboxes(
        state="running", metadata={"team": "x", "env": "prod"}, limit=5, cursor="c1"
    )
    assert call.params == (
        ("state", "running"),
        ("metadata.team", "x"),
        ("metadata.env", "prod"),
        ("limit", "5"),
        ("cursor", "c1"),
    )
    with pytest.raises(ValueError):
        _ops.list_sandboxes(state="sleeping")


def test_exec_is_never_replayed_and_outlives_the_command() -> None:
    req = _ops.exec_request("sleep 1", timeout=100)
    call = _ops.exec_call("sbx_1", req, request_timeout=30)
    assert not call.idempotent
    assert call.timeout == 100 + max(30, _ops.EXEC_GRACE_S)
    unlimited = _ops.exec_request("sleep 1", timeout=0)
    assert unlimited.timeout_s is None
    assert _ops.exec_call("sbx_1", unlimited, 30).timeout is None
    bg = _ops.exec_call("sbx_1", _ops.exec_request("x", background=True), 30)
    assert bg.json["background"] is True


def test_paths_are_quoted_and_files_params() -> None:
    assert _ops.sbx_path("a/b", "/stats") == "/v1/sandboxes/a%2Fb/stats"
    rm = _ops.remove("sbx_1", "/tmp/x y", recursive=False)
    assert rm.method == "DELETE" and rm.params == (("path", "/tmp/x y"), ("recursive", "false"))
    w = _ops.write_file("sbx_1", "/f", "root")
    assert w.params == (("path", "/f"), ("user", "root")) and w.timeout is None
    with pytest.raises(InvalidRequestError):
        _ops.rename("sbx_1", "/a\0b", "/b")  # no NUL in paths
    with pytest.raises(ValueError):
        _ops.list_dir("sbx_1", "/", depth=0)
    assert not _ops.send_stdin("sbx_1", 3, b"hi").idempotent


def test_create_with_network_policy_and_update() -> None:
    call = _create(network={"allow_domains": ["API.example.com."], "allow_public": True})
    assert call.json is not None
    assert call.json["network"]["allow_domains"] == ["api.example.com"]
    assert call.json["network"]["allow_public"] is True
    policy = _ops.network_policy(allow_cidrs=["10.1.0.0/16"], deny_domains=["*.bad.example"])
    put = _ops.set_network("sbx_1", policy)
    assert put.method == "PUT" and put.path == "/v1/sandboxes/sbx_1/network"
    assert put.json == policy.model_dump()
    with pytest.raises(InvalidRequestError):
        _ops.network_policy(allow_cidrs=["10.1.0.1/16"])  # host bits set


def test_local_mistakes_are_sdk_errors_naming_what_is_allowed() -> None:
    with pytest.raises(InvalidRequestError) as e:
        _create(isolation="vm")
    assert e.value.status is None  # refused before sending
    assert e.value.errors == [
        {
            "loc": ["isolation"],
            "field": "isolation",
            "msg": "must be one of namespace, gvisor",
            "allowed": ["namespace", "gvisor"],
        }
    ]
    assert "'vm'" in str(e.value)
    with pytest.raises(InvalidRequestError) as e:
        _create(vcpu=0)
    assert [x["field"] for x in e.value.errors] == ["vcpu"] and "vcpu" in str(e.value)
    assert "pydantic" not in str(e.value)
    with pytest.raises(InvalidRequestError, match="user must be one of root, user"):
        _ops.exec_request("true", user="bob")
    with pytest.raises(InvalidRequestError, match="cmd"):
        _ops.exec_request([])
    with pytest.raises(InvalidRequestError, match="state must be one of"):
        _ops.list_sandboxes(state="sleeping")
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        _ops.send_stdin("sbx_1", 3, b"\xff")
    with pytest.raises(ValueError):  # still a ValueError for code that catches that
        _ops.list_dir("sbx_1", "/", depth=0)


def test_relative_paths_are_in_the_users_home() -> None:
    assert _ops.stat("sbx_1", "a/b.txt").params == (("path", "/home/user/a/b.txt"),)
    assert _ops.write_file("sbx_1", "x", "root").params == (("path", "/root/x"), ("user", "root"))
    assert _ops.rename("sbx_1", "a", "/tmp/b").json == {
        "src": "/home/user/a",
        "dst": "/tmp/b",
        "overwrite": False,
    }
    assert _ops.read_file("sbx_1", "/etc/hostname").params == (("path", "/etc/hostname"),)
    with pytest.raises(InvalidRequestError, match="path is empty"):
        _ops.remove("sbx_1", "")  # never the whole home directory


def test_create_waits_as_long_as_the_server_may() -> None:
    call = _create()
    assert _timeout(call, ConnectionConfig(request_timeout=30)) == _ops.CREATE_WAIT_S
    assert _timeout(call, ConnectionConfig(request_timeout=600)) == 600
    assert _timeout(call, ConnectionConfig(request_timeout=None)) is None
    assert _timeout(_ops.get_sandbox("sbx_1"), ConnectionConfig(request_timeout=30)) == 30
