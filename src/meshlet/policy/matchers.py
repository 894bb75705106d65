"""Precompiled value matchers: strings with Istio's wildcards, and CIDR sets.

Istio's string fields accept an exact value, a prefix (``foo*``), a suffix
(``*foo``) or presence (``*``, any non-empty value). Compiling a list of such
patterns turns it into one set lookup plus two ``str.startswith`` /
``str.endswith`` calls on tuples, whatever the list length. CIDRs become
(version, network, mask) integers so a check is a few integer operations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from functools import lru_cache

Matcher = Callable[[str | None], bool]


def _never(_value: str | None) -> bool:
    return False


def string_matcher(patterns: Iterable[str], *, fold_case: bool = False) -> Matcher:
    """A predicate true when the value matches any pattern; None never matches."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    presence = False
    for raw in patterns:
        pattern = raw.lower() if fold_case else raw
        if pattern == "*":
            presence = True
        elif pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        elif pattern.startswith("*"):
            suffixes.append(pattern[1:])
        else:
            exact.add(pattern)
    if presence:
        return lambda value: bool(value)
    pre, suf = tuple(prefixes), tuple(suffixes)
    frozen = frozenset(exact)
    if not pre and not suf:
        if fold_case:
            return lambda value: value is not None and value.lower() in frozen
        return lambda value: value is not None and value in frozen
    if fold_case:

        def match_folded(value: str | None) -> bool:
            if value is None:
                return False
            v = value.lower()
            return v in frozen or v.startswith(pre) or v.endswith(suf)

        return match_folded

    def match(value: str | None) -> bool:
        return value is not None and (
            value in frozen or value.startswith(pre) or value.endswith(suf)
        )

    return match


@lru_cache(maxsize=4096)
def parse_ip(value: str) -> tuple[int, int] | None:
    """(version, integer) of an address, or None if it is not one. Cached: the
    same peers send many requests."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    return address.version, int(address)


def ip_matcher(cidrs: Iterable[str]) -> Matcher:
    """A predicate true when the address lies in any CIDR (a bare IP is a /32 or /128)."""
    networks: list[tuple[int, int, int]] = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        networks.append((net.version, int(net.network_address), int(net.netmask)))
    if not networks:
        return _never
    nets = tuple(networks)

    def match(value: str | None) -> bool:
        if value is None:
            return False
        parsed = parse_ip(value)
        if parsed is None:
            return False
        version, number = parsed
        return any(v == version and number & mask == net for v, net, mask in nets)

    return match


def port_matcher(ports: Iterable[int]) -> Callable[[int], bool]:
    allowed = frozenset(ports)
    return allowed.__contains__
