"""A small HTTP/1.1 client for the blocking SDK's one-shot calls: kept-alive connections to one
API, whole request bodies and whole responses.

Most SDK calls are a small JSON request and a small JSON answer (create, exec, get, kill). On
them httpx's general machinery (request and URL models, the h11 state machine, the connection
pool's events and locks) cost more than the API's own work: about half a millisecond per call
on a loopback connection, twice in every create → first command. This client writes a request
in one send and parses the answer directly. Everything else — streamed uploads and downloads,
proxies, a caller's own httpx client, the async SDK — still goes through httpx, and failures
here are raised as the httpx exceptions the retry and error mapping already know.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

import httpx

IDLE_EXPIRY_S = 5.0
_HEAD_MAX = 64 * 1024  # status line and headers of one response
_RECV = 256 * 1024
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_INVALID_VALUE = frozenset("\r\n\0")
_PATH_SAFE = "/!$&'()*+,;=:@-._~%"
_NO_BODY_STATUS = frozenset({204, 304})
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # sent with Content-Length: 0 when empty


def json_body(value: object) -> bytes:
    """A JSON request body, encoded as httpx encodes `json=`."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class _Conn:
    """One connection, and when it was last given back idle."""

    __slots__ = ("idle_since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = 0.0

    def close(self) -> None:
        self.sock.close()

    def closed_by_peer(self) -> bool:
        """Whether an idle connection has something to read: the server's close (or bytes no
        request asked for). Either way it cannot carry another request."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            poller = select.poll()  # (select() cannot watch descriptors past 1023)
            poller.register(self.sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class Connections:
    """Kept-alive connections to one API origin, shared by threads (one request per
    connection at a time)."""

    def __init__(self, api_url: str, tls: ssl.SSLContext | None = None, max_idle: int = 64) -> None:
        url = httpx.URL(api_url)  # as httpx reads it: scheme in any case, IDNA host names
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {api_url!r}")
        self.tls = tls if url.scheme == "https" else None
        if url.scheme == "https" and self.tls is None:
            raise ValueError("an https URL needs a TLS context")
        self.host = url.raw_host.decode("ascii")
        default = 443 if url.scheme == "https" else 80
        self.port = url.port or default
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if self.port == default else f"{host}:{self.port}"
        self.prefix = url.raw_path.decode("ascii").split("?", 1)[0].rstrip("/")
        self.url = f"{url.scheme}://{self.authority}{self.prefix}"
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False

    # --- connections ---

    def _connect(self, timeout: float | None) -> _Conn:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except TimeoutError as e:
            raise httpx.ConnectTimeout(str(e) or "timed out connecting") from e
        except OSError as e:
            raise httpx.ConnectError(str(e)) from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except TimeoutError as e:
            sock.close()
            raise httpx.ConnectTimeout(str(e) or "timed out in the TLS handshake") from e
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise httpx.ConnectError(str(e)) from e
        return _Conn(sock)

    def _checkout(self, timeout: float | None) -> _Conn:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(timeout)
            # Idle too long: a middlebox may have forgotten the flow without telling either
            # end (the next request would wait out its timeout), and servers close idle
            # connections (uvicorn after 5 s). httpx's pool keeps them as long.
            fresh = time.monotonic() - conn.idle_since < IDLE_EXPIRY_S
            if fresh and not conn.closed_by_peer():
                return conn
            conn.close()

    def _checkin(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- one request ---

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] = {},
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request and read its whole answer."""
        head = self._head(method, path, params, headers, body)
        conn = self._checkout(timeout)
        try:
            conn.sock.settimeout(timeout)
            try:
                self._send(conn, head, body)
            except httpx.WriteError as e:
                # A server may answer before reading the whole body (e.g. 413) and close:
                # its answer is worth more than the failed write.
                try:
                    status, fields, content, _ = _read_response(conn, method)
                except httpx.HTTPError:
                    raise e from None
                conn.close()
                return httpx.Response(status, headers=fields, content=content)
            status, fields, content, reusable = _read_response(conn, method)
        except BaseException:
            conn.close()
            raise
        if reusable:
            self._checkin(conn)
        else:
            conn.close()
        return httpx.Response(status, headers=fields, content=content)

    def _head(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> bytes:
        target = self.prefix + quote(path, safe=_PATH_SAFE)
        if params:
            target += "?" + urlencode(params)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.authority}"]
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name) or _INVALID_VALUE.intersection(value):
                # Never quote the header: the Authorization value is the API key.
                raise httpx.LocalProtocolError(f"the {name!r} header is not valid HTTP")
            lines.append(f"{name}: {value}")
        lines.append("Accept-Encoding: identity")
        if body is not None or method in _WITH_BODY:
            lines.append(f"Content-Length: {len(body or b'')}")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError("a header is not valid HTTP (not Latin-1)") from None

    @staticmethod
    def _send(conn: _Conn, head: bytes, body: bytes | None) -> None:
        try:
            if body and len(body) <= 64 * 1024:
                conn.sock.sendall(head + body)  # one segment for the common small request
            else:
                conn.sock.sendall(head)
                if body:
                    conn.sock.sendall(body)
        except TimeoutError as e:
            raise httpx.WriteTimeout(str(e) or "timed out sending the request") from e
        except OSError as e:
            raise httpx.WriteError(str(e)) from e


class _Reader:
    """Buffered reads of one response, with socket failures as httpx's exceptions."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.got_any = False

    def fill(self) -> bool:
        """Read more; False at the end of the stream."""
        try:
            chunk = self.conn.sock.recv(_RECV)
        except TimeoutError as e:
            raise httpx.ReadTimeout(str(e) or "timed out reading the response") from e
        except OSError as e:
            raise httpx.ReadError(str(e)) from e
        if not chunk:
            return False
        self.got_any = True
        self.buf += chunk
        return True

    def line(self, limit: int = _HEAD_MAX) -> bytes:
        """One CRLF-terminated line, without its terminator."""
        start = 0
        while True:
            end = self.buf.find(b"\r\n", start)
            if end >= 0:
                out = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return out
            if len(self.buf) > limit:
                raise httpx.RemoteProtocolError("a response line is too long")
            start = max(0, len(self.buf) - 1)
            if not self.fill():
                raise _eof(self.got_any)

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise httpx.RemoteProtocolError("the server closed the connection mid-response")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self) -> bytes:
        while self.fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _eof(got_any: bool) -> httpx.RemoteProtocolError:
    if got_any:
        return httpx.RemoteProtocolError("the server closed the connection mid-response")
    return httpx.RemoteProtocolError("Server disconnected without sending a response.")


def _read_response(conn: _Conn, method: str) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """Status, headers, body and whether the connection can carry another request."""
    r = _Reader(conn)
    while True:
        status_line = r.line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError("the server's answer is not HTTP/1.1")
        status = int(parts[1])
        fields: list[tuple[bytes, bytes]] = []
        size = 0
        while line := r.line():
            size += len(line)
            if size > _HEAD_MAX:
                raise httpx.RemoteProtocolError("the response headers are too large")
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise httpx.RemoteProtocolError("the server sent a malformed header")
            fields.append((name, value.strip()))
        if not 100 <= status < 200 or status == 101:
            break  # 1xx are interim answers (100 Continue, 103 Early Hints): the real one follows
    values: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        values.setdefault(name.lower(), []).append(value)
    connection = b",".join(values.get(b"connection", [])).lower()
    reusable = parts[0] == b"HTTP/1.1" and b"close" not in connection
    if parts[0] != b"HTTP/1.1" and b"keep-alive" in connection:
        reusable = True
    codings = b",".join(values.get(b"transfer-encoding", [])).lower()
    lengths = values.get(b"content-length", [])
    if method == "HEAD" or status in _NO_BODY_STATUS or status == 101:
        body = b""
    elif codings:
        if [c.strip() for c in codings.split(b",")] != [b"chunked"]:
            raise httpx.RemoteProtocolError("unsupported transfer coding in the response")
        body = _chunked(r)
    elif lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise httpx.RemoteProtocolError("the response has an invalid Content-Length")
        body = r.exactly(int(lengths[0]))
    else:
        body, reusable = r.rest(), False  # delimited by the end of the connection
    if r.buf:  # bytes nobody asked for: the connection's framing cannot be trusted
        reusable = False
    encoding = b",".join(values.get(b"content-encoding", [])).strip().lower()
    if encoding and encoding != b"identity":
        body = _decode(encoding, body)
        fields = [(n, v) for n, v in fields if n.lower() not in (b"content-encoding",)]
    return status, fields, body, reusable


def _chunked(r: _Reader) -> bytes:
    out = bytearray()
    while True:
        size_line = r.line().split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise httpx.RemoteProtocolError("the server sent a malformed chunk") from None
        if size == 0:
            while r.line():  # trailers, up to the empty line
                pass
            return bytes(out)
        out += r.exactly(size)
        if r.exactly(2) != b"\r\n":
            raise httpx.RemoteProtocolError("the server sent a malformed chunk")


def _decode(encoding: bytes, body: bytes) -> bytes:
    """Undo a content coding a server applied although asked for none."""
    try:
        if encoding in (b"gzip", b"x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == b"deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error as e:
        raise httpx.DecodingError(f"the response body is not valid {encoding.decode()}") from e
    raise httpx.DecodingError(f"unsupported content coding {encoding.decode()!r}")
