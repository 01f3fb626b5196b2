"""Egress policy: validation of the wire model and the decisions it compiles to."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from hutch.models.network import MAX_RULES, NetworkPolicy, domain_matches
from hutch.runtime.network.policy import CompiledPolicy

IP = ipaddress.IPv4Address


def test_normalizes_and_deduplicates() -> None:
    p = NetworkPolicy(
        allow_domains=["API.Example.COM.", "api.example.com", "*.Bücher.example"],
        allow_cidrs=["10.1.0.0/16", "10.1.0.0/16", "8.8.8.8"],
    )
    assert p.allow_domains == ["api.example.com", "*.xn--bcher-kva.example"]
    assert p.allow_cidrs == ["10.1.0.0/16", "8.8.8.8/32"]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("allow_cidrs", ["10.0.0.1/8"], "host bits"),
        ("allow_cidrs", ["fe80::/10"], "only IPv4"),
        ("allow_cidrs", ["nonsense"], "not an IPv4"),
        ("allow_cidrs", ["127.0.0.1"], "loopback is never reachable"),
        ("allow_cidrs", ["0.0.0.0/0"], "loopback is never reachable"),
        ("allow_domains", ["*"], "not a domain"),
        ("allow_domains", ["*.com"], "not a domain"),
        ("allow_domains", ["a..b"], "not a domain"),
        ("allow_domains", ["-a.com"], "not a domain"),
        ("deny_domains", ["a" * 64 + ".com"], "not a domain"),
        ("allow_domains", [f"a{i}.com" for i in range(MAX_RULES + 1)], "at most"),
    ],
)
def test_refuses_bad_rules(field: str, value: list[str], words: str) -> None:
    with pytest.raises(ValidationError) as e:
        NetworkPolicy.model_validate({field: value})
    assert words in str(e.value)


def test_domain_patterns() -> None:
    assert domain_matches("a.example.com", "*.example.com")
    assert domain_matches("a.b.example.com", "*.example.com")
    assert not domain_matches("example.com", "*.example.com")
    assert not domain_matches("badexample.com", "*.example.com")
    assert domain_matches("example.com", "example.com")
    assert not domain_matches("a.example.com", "example.com")


def _cp(**kw: object) -> CompiledPolicy:
    return CompiledPolicy(
        NetworkPolicy.model_validate(kw),
        frozenset({IP("192.0.2.2")}),
        ipaddress.IPv4Network("10.200.0.0/16"),
    )


def test_ip_decisions() -> None:
    closed = _cp()
    assert not closed.ip_allowed(IP("1.1.1.1"))
    pub = _cp(allow_public=True, deny_cidrs=["1.0.0.0/8"])
    assert pub.ip_allowed(IP("8.8.8.8"))
    assert not pub.ip_allowed(IP("1.1.1.1"))  # deny wins
    for blocked in (
        "10.1.1.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "127.0.0.1",
        "192.0.2.2",
        "10.200.0.6",
        "224.0.0.1",
        "0.1.2.3",
    ):
        assert not pub.ip_allowed(IP(blocked)), blocked
    explicit = _cp(allow_public=True, allow_cidrs=["10.0.0.0/8"])
    assert explicit.ip_allowed(IP("10.1.1.1"))
    assert not explicit.ip_allowed(IP("10.200.0.6"))  # another sandbox: never, even if allowed
    assert not explicit.ip_allowed(IP("10.200.0.5"))  # a gateway: the host itself, never
    assert not explicit.ip_allowed(IP("192.0.2.2"))


def test_proxy_decisions() -> None:
    cp = _cp(allow_domains=["ok.test", "*.wild.test"], deny_domains=["bad.wild.test"])
    web = IP("198.18.1.1")
    assert cp.proxy_allowed("ok.test", web, frozenset({web}))
    assert not cp.proxy_allowed("ok.test", IP("198.18.1.2"), frozenset({web}))  # raw-IP bypass
    assert not cp.proxy_allowed("other.test", web, frozenset({web}))
    assert not cp.proxy_allowed(None, web, frozenset())
    assert cp.proxy_allowed("a.wild.test", web, frozenset({web}))
    assert not cp.proxy_allowed("bad.wild.test", web, frozenset({web}))
    # an allowed name resolving to the host or a private range is still refused
    assert not cp.proxy_allowed("ok.test", IP("192.0.2.2"), frozenset({IP("192.0.2.2")}))
    assert not cp.proxy_allowed("ok.test", IP("10.0.0.1"), frozenset({IP("10.0.0.1")}))
    assert cp.resolvable("ok.test") and not cp.resolvable("bad.wild.test")
    assert not cp.resolvable("other.test")
    assert _cp(allow_public=True).resolvable("anything.example")


def test_forbidden_ranges_and_the_pool_beat_any_allow_rule() -> None:
    """A tenant cannot open the cloud metadata service, or another sandbox, by allowing it."""
    ip = ipaddress.IPv4Address
    cp = CompiledPolicy(
        NetworkPolicy(allow_cidrs=["169.254.0.0/16", "10.0.0.0/8"], allow_domains=["a.example"]),
        frozenset(),
        ipaddress.IPv4Network("10.200.0.0/16"),
        (ipaddress.IPv4Network("169.254.0.0/16"),),
    )
    assert cp.ip_allowed(ip("10.1.2.3"))  # the allow rule itself still works
    for target in ("169.254.169.254", "10.200.0.6", "10.200.3.1"):
        assert not cp.ip_allowed(ip(target)), target
        assert not cp.answer_allowed(ip(target)), target
        assert not cp.proxy_allowed("a.example", ip(target), frozenset({ip(target)})), target
    assert ipaddress.IPv4Network("10.200.0.0/16") in cp.never
