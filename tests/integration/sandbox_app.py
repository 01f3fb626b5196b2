"""A small web app run inside sandboxes by the port tests and the port benchmark.

Standard library only (the base template has python3 and nothing else): HTTP/1.1 with
keep-alive, `GET /headers` (the request as JSON), `POST /echo` (the body back, streamed),
`GET /bytes?n=N` (N bytes), anything else a fixed text, and a WebSocket echo on any path that
asks to upgrade.
"""

from __future__ import annotations

APP_PATH = "/tmp/hutch_test_app.py"

APP_SOURCE = r"""
import base64, hashlib, json, socket, struct, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def log_message(self, *a):
        pass

    def _send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        url = urlsplit(self.path)
        if url.path == "/headers":
            body = {"path": self.path, "method": self.command,
                    "headers": [[k, v] for k, v in self.headers.items()]}
            return self._send(200, json.dumps(body).encode(), "application/json")
        if url.path == "/claims":  # an app trying to claim the origin it is served on
            self.send_response(200)
            self.send_header("Service-Worker-Allowed", "/")
            self.send_header("Set-Cookie", "app=1; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/bytes":
            n = int(parse_qs(url.query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"x" * 65536
            while n > 0:
                self.wfile.write(block[: min(n, len(block))])
                n -= len(block)
            return
        self._send(200, b"hello from the sandbox " + url.path.encode())

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._echo_chunked()
        n = int(self.headers.get("Content-Length", "0"))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        while n > 0:
            chunk = self.rfile.read(min(n, 65536))
            if not chunk:
                break
            self.wfile.write(chunk)
            n -= len(chunk)

    do_PUT = do_POST

    def _echo_chunked(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            n = int(self.rfile.readline().split(b";")[0], 16)
            data = self.rfile.read(n) if n else b""
            self.rfile.readline()
            self.wfile.write(b"%x\r\n%s\r\n" % (n, data))
            if n == 0:
                return

    def _websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        r, w = self.rfile, self.wfile
        while True:
            head = r.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", r.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", r.read(8))[0]
            mask = r.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(n)))
            if op == 8:
                w.write(b"\x88\x00")
                w.flush()
                return
            if op in (1, 2):
                if len(data) < 126:
                    hdr = bytes([0x80 | op, len(data)])
                elif len(data) < 65536:
                    hdr = bytes([0x80 | op, 126]) + struct.pack("!H", len(data))
                else:
                    hdr = bytes([0x80 | op, 127]) + struct.pack("!Q", len(data))
                w.write(hdr + data)
                w.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    port, host = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1")
    if ":" in host:
        Server.address_family = socket.AF_INET6
    Server((host, port), Handler).serve_forever()
"""
