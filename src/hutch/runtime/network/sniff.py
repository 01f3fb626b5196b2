"""Find the destination name in the first bytes of a connection: TLS SNI or HTTP Host.

Hand-written because only the server name is needed: a TLS library would want to terminate
the handshake, and the parsers on PyPI that only read a ClientHello are unmaintained.
"""

from __future__ import annotations

import struct

MAX_HEAD = 64 * 1024


class NeedMore(Exception):
    """The bytes so far end before the name could be found."""


class Malformed(Exception):
    """Not a TLS ClientHello / HTTP request we can read."""


def _handshake(data: bytes) -> bytes:
    """Concatenate TLS handshake records until the first handshake message is complete."""
    out = b""
    pos = 0
    while True:
        if len(data) < pos + 5:
            raise NeedMore
        ctype, _ver, length = struct.unpack_from("!BHH", data, pos)
        if ctype != 0x16:
            raise Malformed("not a TLS handshake record")
        if len(data) < pos + 5 + length:
            raise NeedMore
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(out) >= 4:
            need = 4 + int.from_bytes(out[1:4], "big")
            if len(out) >= need:
                return out[:need]


def tls_sni(data: bytes) -> str | None:
    """The SNI host name of a ClientHello (None when the client sent none)."""
    hs = _handshake(data)
    if hs[0] != 1:
        raise Malformed("first handshake message is not a ClientHello")
    try:
        pos = 4 + 2 + 32  # header, version, random
        pos += 1 + hs[pos]  # session id
        pos += 2 + int.from_bytes(hs[pos : pos + 2], "big")  # cipher suites
        pos += 1 + hs[pos]  # compression methods
        if pos >= len(hs):
            return None
        end = pos + 2 + int.from_bytes(hs[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            etype, elen = struct.unpack_from("!HH", hs, pos)
            pos += 4
            if etype == 0:  # server_name
                lpos = pos + 2
                while lpos + 3 <= pos + elen:
                    ntype, nlen = struct.unpack_from("!BH", hs, lpos)
                    lpos += 3
                    if ntype == 0:
                        return hs[lpos : lpos + nlen].decode("ascii").lower().rstrip(".")
                    lpos += nlen
                return None
            pos += elen
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise Malformed(str(e)) from None
    return None


def http_host(data: bytes) -> str | None:
    """The Host header's name (without port) of the first HTTP request."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= MAX_HEAD:
            raise Malformed("request head too long")
        raise NeedMore
    lines = data[:end].split(b"\r\n")
    if b" HTTP/1." not in lines[0]:
        raise Malformed("not an HTTP/1 request")
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip().decode("ascii", errors="replace").lower()
            if host.startswith("["):
                return host[1 : host.find("]")]
            return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")
    return None


def server_name(data: bytes) -> tuple[str, str | None]:
    """("tls" | "http", name) from the first bytes; raises NeedMore or Malformed."""
    if not data:
        raise NeedMore
    if data[0] == 0x16:
        return "tls", tls_sni(data)
    return "http", http_host(data)
