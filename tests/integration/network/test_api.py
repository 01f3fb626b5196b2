"""The egress policy through the public surfaces: API (`hutch serve`), SDK (sync and async)
and CLI, against the network runner of the test world."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch.db.session import Database
from hutch.models import NetworkPolicy
from hutch.models.network import MAX_RULES
from hutch.sdk import AsyncSandbox, Sandbox
from tests.integration.api.conftest import Server, start_server
from tests.integration.network.conftest import WEB, NetRunner

pytestmark = [pytest.mark.root, pytest.mark.anyio]
HELLO_OK = f"hello host=ok.test addr={WEB}\n"
HELLO_OTHER = f"hello host=other.test addr={WEB}\n"
CURL = ["curl", "-sS", "-m", "5"]


@pytest.fixture
def api(database: Database, tmp_path: Path, net_runner: NetRunner) -> Iterator[Server]:
    """`hutch serve` (on loopback of this machine) using the world's runner by its socket."""
    s = start_server(database, tmp_path, "--runner-socket", str(net_runner.socket))
    yield s
    if s.proc.poll() is None:
        s.stop()


def _curl(c: httpx.Client, sid: str, url: str) -> str:
    r = c.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": [*CURL, url]})
    assert r.status_code == 200, r.text
    return str(r.json()["stdout"])


def test_policy_through_the_api(api: Server) -> None:
    with httpx.Client(base_url=api.url, headers=api.admin_headers(), timeout=120) as c:
        r = c.post("/v1/sandboxes", json={"network": {"allow_domains": ["OK.test"]}})
        assert r.status_code == 201, r.text
        sbx = r.json()
        sid = sbx["sandbox_id"]
        try:
            assert sbx["network"]["allow_domains"] == ["ok.test"]
            assert _curl(c, sid, "http://ok.test/") == HELLO_OK
            assert _curl(c, sid, "http://other.test/") == ""
            assert c.get(f"/v1/sandboxes/{sid}/network").json()["allow_domains"] == ["ok.test"]

            r = c.put(f"/v1/sandboxes/{sid}/network", json={"allow_domains": ["other.test"]})
            assert r.status_code == 200 and r.json()["network"]["allow_domains"] == ["other.test"]
            assert _curl(c, sid, "http://other.test/") == HELLO_OTHER
            assert c.get(f"/v1/sandboxes/{sid}").json()["network"]["allow_domains"] == [
                "other.test"
            ]

            # bad input: 422 naming the field and what is allowed; the policy is unchanged
            for body, field, words in (
                ({"allow_cidrs": ["10.0.0.1/8"]}, "allow_cidrs", "host bits"),
                ({"allow_cidrs": ["::1/128"]}, "allow_cidrs", "IPv4"),
                ({"allow_cidrs": ["127.0.0.0/8"]}, "", "loopback"),
                ({"allow_domains": ["bad_name!.com"]}, "allow_domains", "not a domain"),
                (
                    {"allow_domains": [f"a{i}.test" for i in range(MAX_RULES + 1)]},
                    "allow_domains",
                    "at most",
                ),
                ({"allow_everything": True}, "allow_everything", "xtra"),
            ):
                r = c.put(f"/v1/sandboxes/{sid}/network", json=body)
                assert r.status_code == 422, (body, r.text)
                problem = r.json()
                assert problem["code"] == "invalid_request"
                assert words in json.dumps(problem), (body, problem)
                assert field in json.dumps(problem["errors"]), problem
            assert c.get(f"/v1/sandboxes/{sid}/network").json()["allow_domains"] == ["other.test"]
            r = c.post("/v1/sandboxes", json={"network": {"deny_cidrs": ["300.1.1.1/32"]}})
            assert r.status_code == 422 and "deny_cidrs" in r.text

            # sandboxes:write is needed to change it; reading needs sandboxes:read
            key = c.post("/v1/keys", json={"name": "ro", "scopes": ["sandboxes:read"]}).json()
            ro = {"Authorization": f"Bearer {key['key']}"}
            r = c.put(f"/v1/sandboxes/{sid}/network", json={"allow_public": True}, headers=ro)
            assert r.status_code == 403
            assert c.get(f"/v1/sandboxes/{sid}/network", headers=ro).status_code == 200
        finally:
            c.delete(f"/v1/sandboxes/{sid}")
        r = c.put(f"/v1/sandboxes/{sid}/network", json={"allow_public": True})
        assert r.status_code == 409 and r.json()["code"] == "sandbox_not_running"
        r = c.put("/v1/sandboxes/sbx_nope/network", json={})
        assert r.status_code == 404


def test_openapi_documents_the_routes(api: Server) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    ops = spec["paths"]["/v1/sandboxes/{sandbox_id}/network"]
    assert set(ops) >= {"get", "put"}
    assert "422" in ops["put"]["responses"]
    assert "NetworkPolicy" in spec["components"]["schemas"]


def test_sdk_sync(api: Server) -> None:
    key = (api.data_dir / "admin-key").read_text().strip()
    with Sandbox.create(
        network=NetworkPolicy(allow_domains=["ok.test"]), api_url=api.url, api_key=key
    ) as sb:
        assert sb.commands.run(" ".join(CURL) + " http://ok.test/").stdout == HELLO_OK
        policy = sb.network.update(allow_domains=["other.test"])
        assert policy.allow_domains == ["other.test"]
        assert sb.network.get() == policy
        out = sb.commands.run(" ".join(CURL) + " http://other.test/").stdout
        assert out == HELLO_OTHER


async def test_sdk_async(api: Server) -> None:
    key = (api.data_dir / "admin-key").read_text().strip()
    async with await AsyncSandbox.create(api_url=api.url, api_key=key) as sb:
        assert (await sb.network.get()) == NetworkPolicy()
        policy = await sb.network.update(allow_cidrs=[f"{WEB}/32"])
        assert policy.allow_cidrs == [f"{WEB}/32"]
        r = await sb.commands.run(" ".join(CURL) + f" http://{WEB}/")
        assert r.stdout == f"hello host={WEB} addr={WEB}\n"


def test_cli(api: Server) -> None:
    env = {
        **os.environ,
        "HUTCH_API_URL": api.url,
        "HUTCH_API_KEY": (api.data_dir / "admin-key").read_text().strip(),
    }

    def hutch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hutch.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    r = hutch("sandbox", "create", "--allow-domain", "ok.test", "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["sandbox_id"]
    try:
        r = hutch("sandbox", "network", sid, "--json")
        assert json.loads(r.stdout)["allow_domains"] == ["ok.test"]
        r = hutch("sandbox", "network", sid, "--allow-cidr", f"{WEB}/32", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["allow_cidrs"] == [f"{WEB}/32"]
        r = hutch("sandbox", "network", sid, "--allow-cidr", "10.0.0.1/8")
        assert r.returncode != 0 and "host bits" in r.stderr
        r = hutch("sandbox", "network", sid, "--clear", "--json")
        assert json.loads(r.stdout) == NetworkPolicy().model_dump()
    finally:
        hutch("sandbox", "kill", sid)
