"""Egress policy of a sandbox: which destinations it may reach, by CIDR and by domain name."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator, model_validator

from hutch.models.common import WireModel

MAX_RULES = 256  # per list: nftables and the proxy check stay cheap, and a policy stays readable
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_cidr(value: str) -> str:
    """An IPv4 address or network in canonical form (`10.0.0.0/8`); host bits are refused."""
    try:
        net = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"{value!r} is not an IPv4 address or CIDR network ({e})") from None
    if net.version != 4:
        raise ValueError(f"{value!r}: only IPv4 is offered to sandboxes")
    return str(net)


def normalize_domain(value: str) -> str:
    """A lower-case ASCII domain name, exact (`api.example.com`) or a suffix (`*.example.com`)."""
    name = value.strip().rstrip(".").lower()
    wildcard = name.startswith("*.")
    base = name[2:] if wildcard else name
    try:
        ascii_name = base.encode("idna").decode() if base else ""
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name.split(".")
    if (
        not ascii_name
        or len(ascii_name) > 253
        or len(labels) < (2 if wildcard else 1)
        or not all(_LABEL.match(label) for label in labels)
    ):
        raise ValueError(
            f"{value!r} is not a domain name: use letters, digits and '-' in dot-separated "
            "labels, optionally starting with '*.' to match every subdomain"
        )
    return f"*.{ascii_name}" if wildcard else ascii_name


def domain_matches(name: str, pattern: str) -> bool:
    """Whether `name` (already normalized) matches an exact or `*.suffix` pattern.

    `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com` itself."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


class NetworkPolicy(WireModel):
    """Deny-by-default egress. Deny rules win over allow rules. Private, link-local, metadata,
    host and other-sandbox addresses are only reachable when an `allow_cidrs` entry names them;
    the host's loopback is never reachable. Domain rules apply to HTTP (port 80) and HTTPS
    (port 443), checked against the Host header and the TLS SNI, and to DNS answers."""

    allow_cidrs: list[str] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description="IPv4 networks the sandbox may reach",
    )
    deny_cidrs: list[str] = Field(default_factory=list, max_length=MAX_RULES)
    allow_domains: list[str] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description="Names reachable over HTTP/HTTPS: exact, or `*.suffix` for every subdomain",
    )
    deny_domains: list[str] = Field(default_factory=list, max_length=MAX_RULES)
    allow_public: bool = Field(
        default=False, description="Allow every public IPv4 address (private ranges stay blocked)"
    )

    @field_validator("allow_cidrs", "deny_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_cidr(c) for c in v))

    @field_validator("allow_domains", "deny_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_domain(d) for d in v))

    @model_validator(mode="after")
    def _no_loopback(self) -> NetworkPolicy:
        for c in self.allow_cidrs:
            if ipaddress.IPv4Network(c).overlaps(LOOPBACK):
                raise ValueError(
                    f"allow_cidrs: {c} overlaps 127.0.0.0/8; the host's loopback is never "
                    "reachable from a sandbox"
                )
        return self

    def is_closed(self) -> bool:
        """Whether nothing at all may be reached (no link is needed)."""
        return not (self.allow_cidrs or self.allow_domains or self.allow_public)
