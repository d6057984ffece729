"""The address classifier: every IPv4 and IPv6 block that is not public, named, and public addresses let through."""

from __future__ import annotations

import pytest

from app.address_policy import refusal

REFUSED = {
    "unspecified": ["0.0.0.0", "0.255.255.255", "::", "::ffff:0.0.0.0"],
    "loopback": ["127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "64:ff9b::7f00:1"],
    "private": [
        "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.127.255.255", "172.16.0.1", "172.31.255.255",
        "192.168.0.1", "192.168.255.255", "::ffff:10.1.2.3", "::ffff:192.168.1.1", "64:ff9b::a00:1",
        "fc00::1", "fd12:3456:789a::1", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ],
    "link-local": [
        "169.254.0.1", "169.254.169.254", "169.254.255.255", "::ffff:169.254.169.254", "fe80::1", "fe80::1%eth0",
        "febf:ffff::1",
    ],
    "multicast": ["224.0.0.1", "239.255.255.250", "::ffff:224.0.0.251", "ff02::1", "ff05::1:3", "ffff::1"],
    "reserved": [
        "192.0.0.1", "192.0.0.170", "192.0.2.1", "192.88.99.1", "198.18.0.1", "198.19.255.255", "198.51.100.7",
        "203.0.113.9", "240.0.0.1", "255.255.255.255", "::ffff:198.51.100.7",
        "::127.0.0.1", "::8.8.8.8",  # IPv4-compatible IPv6, deprecated
        "64:ff9b:1::1", "100::1", "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:10::1", "2001:db8::1",
        "2001:db8:ffff::1", "2002:7f00:1::1", "2002:808:808::1", "3fff::1", "3fff:fff::1", "5f00::1", "fec0::1",
        "1::1", "4000::1", "e000::1",
    ],
}  # fmt: skip
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
    "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255", "11.0.0.1",
    "2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001::1", "2001:200::1", "3fff:1000::1",
    "::ffff:8.8.8.8", "64:ff9b::808:808",
]  # fmt: skip


@pytest.mark.parametrize(("address", "why"), [(a, why) for why, addresses in REFUSED.items() for a in addresses])
def test_refusal_names_why_an_address_is_not_public(address, why):
    assert refusal(address) == why


@pytest.mark.parametrize("address", PUBLIC)
def test_refusal_lets_public_addresses_through(address):
    assert refusal(address) is None
