"""Compiled per-host route tables: which route, and which of its matches, wins.

Two precedence models meet here (``Precedence`` in the config):

- VirtualService: "the first rule matching an incoming request is used" (Istio
  docs, HTTPRoute), across the host's VirtualServices in load order.
- HTTPRoute: Gateway API's precedence: Exact path, then longest prefix, then a
  method match, then most header matches, then most query matches; ties go to
  the oldest route, then ``namespace/name`` alphabetically, then the first rule.

Both become one list sorted once at compile time (by position for Istio, by
``(specificity desc, order asc)`` for Gateway API), so at request time the first
match in the list is the best one (STYLE.md: the winner is chosen by an explicit
key, never by luck of the YAML order). The list is split by first path element
so a table of hundreds of routes tests only a handful per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshlet.config.istio_networking import HostRoutes, Precedence, Route
from meshlet.traffic.match import (
    CompiledMatch,
    RequestAttributes,
    compile_match,
    first_segment,
    path_segment,
)


@dataclass(frozen=True, slots=True)
class Entry:
    route: Route
    match: CompiledMatch | None  # None: the route has no match (matches everything)
    rank: int  # position in precedence order; lower wins


@dataclass(frozen=True, slots=True)
class RouteHit:
    route: Route
    match: CompiledMatch | None


class RouteTable:
    """The compiled routes of one host."""

    __slots__ = ("_by_segment", "_entries", "_wildcard", "host")

    def __init__(self, host_routes: HostRoutes) -> None:
        self.host = host_routes.host
        entries: list[tuple[tuple[object, ...], Route, CompiledMatch | None]] = []
        for pos, route in enumerate(host_routes.routes):
            compiled: list[CompiledMatch | None] = [compile_match(m) for m in route.matches]
            compiled = compiled or [None]
            for k, cm in enumerate(compiled):
                if route.precedence is Precedence.SPECIFICITY and cm is not None:
                    neg = tuple(-x for x in cm.specificity)
                    key: tuple[object, ...] = (neg, route.order, k)
                else:
                    key = ((), (), pos, k)
                entries.append((key, route, cm))
        entries.sort(key=lambda e: e[0])
        self._entries = tuple(Entry(r, cm, i) for i, (_, r, cm) in enumerate(entries))
        by_seg: dict[str, list[Entry]] = {}
        wildcard: list[Entry] = []
        for e in self._entries:
            seg = first_segment(e.match.source) if e.match is not None else None
            if seg is None:
                wildcard.append(e)
            else:
                by_seg.setdefault(seg, []).append(e)
        # Each segment's list holds its own entries and every wildcard one, in rank
        # order, so a lookup walks one list.
        self._by_segment = {
            seg: tuple(sorted(es + wildcard, key=lambda e: e.rank)) for seg, es in by_seg.items()
        }
        self._wildcard = tuple(wildcard)

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def best(self, attrs: RequestAttributes) -> RouteHit | None:
        """The winning route for ``attrs``, or None when nothing matches."""
        candidates = self._by_segment.get(path_segment(attrs.path), self._wildcard)
        for e in candidates:
            if e.match is None or e.match(attrs):
                return RouteHit(e.route, e.match)
        return None

    def all_matches(self, attrs: RequestAttributes) -> list[RouteHit]:
        """Every matching (route, match), best first: for ``route explain`` and tests."""
        return [
            RouteHit(e.route, e.match) for e in self._entries if e.match is None or e.match(attrs)
        ]


class HostIndex:
    """Finds the table for a request's host: exact name, then the short name of a
    cluster-local name (``svc.ns.svc.cluster.local`` -> ``svc``), then the longest
    wildcard suffix (``*.example.com``)."""

    __slots__ = ("_exact", "_wild")

    def __init__(self, hosts: Mapping[str, HostRoutes]) -> None:
        self._exact: dict[str, RouteTable] = {}
        wild: list[tuple[str, RouteTable]] = []
        for name, hr in hosts.items():
            table = RouteTable(hr)
            if name.startswith("*"):
                wild.append((name[1:], table))
            else:
                self._exact[name] = table
        for name, table in list(self._exact.items()):
            short = _short_name(name)
            if short is not None:
                self._exact.setdefault(short, table)
        self._wild = tuple(sorted(wild, key=lambda w: -len(w[0])))

    def lookup(self, host: str) -> RouteTable | None:
        table = self._exact.get(host)
        if table is not None:
            return table
        short = _short_name(host)
        if short is not None and short in self._exact:
            return self._exact[short]
        for suffix, table in self._wild:
            if host.endswith(suffix):
                return table
        return None


def _short_name(host: str) -> str | None:
    for suffix in (".svc.cluster.local", ".svc"):
        if host.endswith(suffix):
            return host[: -len(suffix)].split(".", 1)[0]
    return None
