"""`get_host` / `get_url` of Sandbox and AsyncSandbox, and `hutch sandbox port`, against a real
server and a sandbox serving the test app."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import pytest

from hutch.sdk import AsyncSandbox, Sandbox
from tests.integration.ports.conftest import Served
from tests.integration.sdk import server as srv

pytestmark = [pytest.mark.root, pytest.mark.slow]


def fetch(url: str, **kw: object) -> httpx.Response:
    """GET a URL on the API's loopback socket; a host-routed name goes in the Host header."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        local = url.replace(parts.netloc, f"127.0.0.1:{parts.port}", 1)
        return httpx.get(local, headers={"Host": parts.netloc}, timeout=30, **kw)  # type: ignore[arg-type]
    return httpx.get(url, timeout=30, **kw)  # type: ignore[arg-type]


def test_sync_sdk_urls(served: Served, hutch: srv.Server) -> None:
    sb = Sandbox.connect(served.sandbox_id, api_url=hutch.url, api_key=hutch.admin_key)
    try:
        api_port = urlsplit(hutch.url).port
        assert sb.get_host(8000) == f"{served.host}:{api_port}"
        plain = sb.get_url(8000, "/a")
        assert plain == f"http://{served.host}:{api_port}/a"
        assert fetch(plain).status_code == 401  # private: a plain URL needs a key
        for routing in ("host", "path"):
            signed = sb.get_url(8000, "/a?x=1", signed=True, expires_in=60, routing=routing)
            r = fetch(signed)
            assert (r.status_code, r.text) == (200, "hello from the sandbox /a")
        info = sb.set_port_public(8000)
        try:
            assert info.public and sb.get_port(8000).public
            r = fetch(sb.get_url(8000, "/p", routing="path"))
            assert (r.status_code, r.text) == (200, "hello from the sandbox /p")
        finally:
            assert not sb.set_port_public(8000, False).public
    finally:
        sb.close()


def test_async_sdk_urls(served: Served, hutch: srv.Server) -> None:
    async def scenario() -> None:
        sb = await AsyncSandbox.connect(
            served.sandbox_id, api_url=hutch.url, api_key=hutch.admin_key
        )
        try:
            assert (await sb.get_host(8000)).startswith(served.host + ":")
            signed = await sb.get_url(8000, "/b", signed=True, routing="path")
            assert fetch(signed).text == "hello from the sandbox /b"
            assert (await sb.get_port(8000)).public is False
        finally:
            await sb.close()

    asyncio.run(scenario())


def cli(hutch: srv.Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUTCH_API_URL": hutch.url, "HUTCH_API_KEY": hutch.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "hutch.cli.main", "sandbox", "port", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_port(served: Served, hutch: srv.Server) -> None:
    sid = served.sandbox_id
    r = cli(hutch, sid, "8000", "--url", "--routing", "path")
    assert r.returncode == 0, r.stderr
    assert "hutch_token=" in r.stdout
    assert fetch(r.stdout.strip()).status_code == 200
    r = cli(hutch, sid, "8000", "--public", "--json")
    try:
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["public"] is True
        r = cli(hutch, sid, "8000", "--url")
        assert "hutch_token" not in r.stdout and fetch(r.stdout.strip()).status_code == 200
    finally:
        r = cli(hutch, sid, "8000", "--private", "--json")
        assert json.loads(r.stdout)["public"] is False
    r = cli(hutch, sid, "8000", "--routing", "nope")
    assert r.returncode != 0 and "--routing" in r.stderr
