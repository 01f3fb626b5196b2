"""Test hosts run inside a network namespace a test made: `python internet.py ROLE ...`.

Role `inet` (the test's "internet"): HTTP on :80 and HTTPS on :443 of every address (the reply
names the Host header and the address that answered, /bytes/N sends N bytes, /stream trickles),
a UDP :9999 recorder (what arrived, from which source, appended to a file the test reads),
a banner+echo TCP service on :7000 of every address, and an authoritative DNS server for the
`.test` zone. Role `host` (services on the runner's own namespace that sandboxes must never
reach): the same HTTP service on 0.0.0.0:80 and :8081. Prints "ready" once listening; exits
when stdin closes, so it never outlives its test.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

WEB = "198.18.1.1"
PLAIN = "198.18.1.2"
DNS = "198.18.1.53"
ZONE = {
    "ok.test": WEB,
    "other.test": WEB,
    "a.wild.test": WEB,
    "b.a.wild.test": WEB,
    "plain.test": PLAIN,
    "loop.test": "127.0.0.1",
    "private.test": "10.9.9.9",
    "hostaddr.test": "198.18.0.1",
}


class Zone(BaseResolver):
    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name in ZONE and request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ZONE[name]), ttl=60))
        elif name not in ZONE:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


async def http(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1: "/" answers and waits for the next request; a request body (by
    Content-Length) is read and ignored."""
    try:
        while True:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode(errors="replace").split("\r\n")
            path = lines[0].split(" ")[1]
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
            }
            await r.readexactly(int(fields.get("content-length", "0")))
            if fields.get("transfer-encoding", "").lower() == "chunked":
                while size := int((await r.readuntil(b"\r\n")).strip(), 16):
                    await r.readexactly(size + 2)
                await r.readuntil(b"\r\n")
            host = fields.get("host", "")
            here = w.get_extra_info("sockname")[0]
            if path.startswith("/bytes/"):
                n = int(path.split("/")[2])
                w.write(
                    f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n".encode()
                )
                chunk = b"x" * 65536
                while n > 0:
                    w.write(chunk[: min(n, len(chunk))])
                    n -= min(n, len(chunk))
                    await w.drain()
                return
            if path == "/stream":
                w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                for _ in range(600):  # a minute at most
                    w.write(b"tick\n")
                    await w.drain()
                    await asyncio.sleep(0.05)
                return
            body = f"hello host={host} addr={here}\n".encode()
            w.write(b"HTTP/1.1 200 OK\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await w.drain()
            if fields.get("connection", "").lower() == "close":
                return
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        pass
    finally:
        w.close()


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        w.write(f"banner {w.get_extra_info('sockname')[0]}\n".encode())
        while data := await asyncio.wait_for(r.read(65536), 60):
            w.write(data)
            await w.drain()
    except (OSError, TimeoutError):
        pass
    finally:
        w.close()


class Recorder(asyncio.DatagramProtocol):
    """UDP :9999 writes each datagram as `SOURCE PAYLOAD` lines to a file the test reads."""

    def __init__(self, path: str) -> None:
        self.path = path

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with open(self.path, "a") as f:
            f.write(f"{addr[0]} {data.decode(errors='replace')}\n")


async def main(role: str, cert: str | None, key: str | None, record: str | None = None) -> None:
    servers = []
    if role == "inet":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        assert cert and key
        ctx.load_cert_chain(cert, key)
        servers.append(await asyncio.start_server(http, "0.0.0.0", 80))
        servers.append(await asyncio.start_server(http, "0.0.0.0", 443, ssl=ctx))
        servers.append(await asyncio.start_server(echo, "0.0.0.0", 7000))
        assert record
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: Recorder(record), local_addr=("0.0.0.0", 9999)
        )
        dns = DNSServer(Zone(), address=DNS, port=53)
        dns.start_thread()
    else:
        servers.append(await asyncio.start_server(http, "0.0.0.0", 80))
        servers.append(await asyncio.start_server(http, "0.0.0.0", 8081))
        servers.append(await asyncio.start_server(echo, "0.0.0.0", 7000))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin


if __name__ == "__main__":
    argv = [*sys.argv[1:], None, None, None]
    asyncio.run(main(str(argv[0]), argv[1], argv[2], argv[3]))
