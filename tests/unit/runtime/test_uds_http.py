"""The runner's lean HTTP client: framing, connection reuse and failures, against a real
unix-socket server that answers with exactly the bytes each test gives it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hutch.runner import uds_http
from hutch.runner.uds_http import RunnerTransportError, UnixHTTP

Handler = Callable[[bytes], bytes | None]


class Server:
    """Reads one request head (and Content-Length body) at a time; answers with handler(request)
    or closes the connection when the handler returns None."""

    def __init__(self, path: Path, handler: Handler, *, once: bool = False) -> None:
        self.path = path
        self.handler = handler
        self.once = once  # hang up after the first answer
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                req = head + await r.readexactly(length)
                self.requests.append(req)
                answer = self.handler(req)
                if answer is None:
                    break
                w.write(answer)
                await w.drain()
                if self.once or b"connection: close" in answer:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            w.close()


def ok(body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_json_request_and_answers_by_length_chunked_and_close(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    answers = iter(
        [
            ok(b'{"a": 1}'),
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3;ext=1\r\n[1,\r\n2\r\n2]\r\n0\r\nx-trailer: y\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
        ]
    )

    async def main() -> None:
        async with Server(sock, lambda _req: next(answers)) as srv:
            c = UnixHTTP(str(sock), timeout=5)
            a = await c.request(
                "POST", "/v1/x y", params={"p": "a&b", "n": 3}, json_body={"k": "v"}
            )
            assert (a.status_code, a.json()) == (200, {"a": 1})
            req = srv.requests[0]
            assert req.startswith(b"POST /v1/x%20y?p=a%26b&n=3 HTTP/1.1\r\n")
            assert b"Content-Type: application/json" in req
            assert json.loads(req.split(b"\r\n\r\n", 1)[1]) == {"k": "v"}
            b = await c.request("GET", "/chunked")
            assert (b.status_code, b.json()) == (201, [1, 2])
            e = await c.request("DELETE", "/empty")
            assert (e.status_code, e.content) == (204, b"")
            assert srv.connections == 1, "keep-alive: one connection for all of these"
            d = await c.request("GET", "/close")
            assert d.text == "until the end"
            await c.aclose()

    run(main())


def test_error_answers_are_returned_not_raised(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    body = b'{"code": "sandbox_not_found", "detail": "no"}'
    answer = f"HTTP/1.1 404 Not Found\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body

    async def main() -> None:
        async with Server(sock, lambda _req: answer):
            c = UnixHTTP(str(sock), timeout=5)
            a = await c.request("GET", "/missing")
            assert (a.status_code, a.reason_phrase, a.json()["code"]) == (
                404,
                "Not Found",
                "sandbox_not_found",
            )
            await c.aclose()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    ],
)
def test_malformed_or_cut_answers_raise_transport_errors(tmp_path: Path, answer: bytes) -> None:
    sock = tmp_path / "s.sock"

    async def main() -> None:
        # Answer, then hang up: a cut body ends in EOF instead of waiting for the timeout.
        async with Server(sock, lambda _req: answer, once=True):
            c = UnixHTTP(str(sock), timeout=5)
            with pytest.raises(RunnerTransportError):
                await c.request("GET", "/")
            assert c._idle == [], "a broken connection is never reused"
            await c.aclose()

    run(main())


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"

    async def main() -> None:
        async with Server(sock, lambda _req: b""):  # reads the request, never answers
            c = UnixHTTP(str(sock), timeout=0.2)
            with pytest.raises(RunnerTransportError, match="did not answer"):
                await c.request("GET", "/slow")
            await c.aclose()

    run(main())


def test_no_server_is_a_transport_error(tmp_path: Path) -> None:
    async def main() -> None:
        c = UnixHTTP(str(tmp_path / "missing.sock"), timeout=1)
        with pytest.raises(RunnerTransportError, match="cannot connect"):
            await c.request("GET", "/")

    run(main())


def test_idle_connections_are_dropped_before_the_server_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "s.sock"
    now = [1000.0]
    monkeypatch.setattr(uds_http.time, "monotonic", lambda: now[0])

    async def main() -> None:
        async with Server(sock, lambda _req: ok(b"{}")) as srv:
            c = UnixHTTP(str(sock), timeout=5)
            await c.request("GET", "/")
            now[0] += uds_http.IDLE_S - 0.1
            await c.request("GET", "/")
            assert srv.connections == 1
            now[0] += uds_http.IDLE_S + 0.1  # idle too long: a fresh connection
            await c.request("GET", "/")
            assert srv.connections == 2
            await c.aclose()
            with pytest.raises(RunnerTransportError, match="closed"):
                await c.request("GET", "/")

    run(main())


def test_interim_answers_are_skipped(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"

    async def main() -> None:
        async with Server(sock, lambda _req: interim + ok(b'{"n": 1}')):
            c = UnixHTTP(str(sock), timeout=5)
            for n in range(2):  # the connection stays in step for the next request
                a = await c.request("GET", f"/{n}")
                assert (a.status_code, a.json()) == (200, {"n": 1})
            await c.aclose()

    run(main())
