"""Which IP addresses the gateway may connect to for a URL it did not choose: public unicast ones only."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA's IPv4 special-purpose address registry (RFC 6890 and its updates): every block not globally reachable.
REFUSED_V4 = tuple(
    (ipaddress.IPv4Network(network), why)
    for network, why in (
        ("0.0.0.0/8", "unspecified"),  # "this network"; connecting to 0.0.0.0 reaches the host itself
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "private"),  # shared address space behind carrier-grade NAT
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),  # cloud metadata services answer at 169.254.169.254
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "reserved"),  # documentation (TEST-NET-1)
        ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast, deprecated
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),  # benchmarking
        ("198.51.100.0/24", "reserved"),  # documentation (TEST-NET-2)
        ("203.0.113.0/24", "reserved"),  # documentation (TEST-NET-3)
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # future use, and 255.255.255.255 (broadcast)
    )
)

# IPv6 outside 2000::/3 (global unicast) is never public; these are the blocks inside it that are not either.
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
REFUSED_V6 = tuple(
    (ipaddress.IPv6Network(network), why)
    for network, why in (
        ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo (2001::/32) among them
        ("2001:db8::/32", "reserved"),  # documentation
        ("2002::/16", "reserved"),  # 6to4: an IPv4 address of any kind behind a relay
        ("3fff::/20", "reserved"),  # documentation (RFC 9637)
    )
)
# Outside 2000::/3, the names worth giving; anything else there is "reserved".
NAMED_V6 = tuple(
    (ipaddress.IPv6Network(network), why)
    for network, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),  # unique local addresses
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)
# IPv6 forms that carry an IPv4 address, reached as that address: judged as it is.
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # NAT64's well-known prefix (RFC 6052)


def refusal(address: str) -> str | None:
    """Return why address must not be connected to ("loopback", "private", ...), or None for a public one."""
    try:
        # getaddrinfo writes a link-local IPv6 address with its zone ("fe80::1%eth0"); the zone changes nothing here.
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in MAPPED or ip in NAT64:
            return refusal(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip not in GLOBAL_UNICAST:
            return next((why for network, why in NAMED_V6 if ip in network), "reserved")
        return next((why for network, why in REFUSED_V6 if ip in network), None)
    return next((why for network, why in REFUSED_V4 if ip in network), None)
