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

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from meshlet.config.routing import HostRoutes, MatchKind, Precedence, Route
from meshlet.traffic.match import (
    CompiledMatch,
    RequestAttributes,
    compile_match,
    index_key,
    path_prefixes,
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


def _is_ancestor(a: str, b: str) -> bool:
    """Is index key ``a`` a proper element-boundary prefix of key ``b``?"""
    return a == "" or (len(b) > len(a) and b.startswith(a) and b[len(a)] == "/")


def _exact_header(e: Entry, name: str) -> str | None:
    if e.match is None:
        return None
    for h in e.match.source.headers:
        if h.name == name and h.match.kind is MatchKind.EXACT:
            return h.match.value
    return None


class _Candidates:
    """One list of entries, optionally split on the value of one header.

    Inference tables often hold dozens of routes under one path that differ only
    in ``x-model-name`` (or another header) by exact value. When at least
    ``_SPLIT_MIN`` entries test the same header for an exact value, they are
    bucketed by that value; entries that do not test it go in every bucket, so
    rank order and the answer are unchanged."""

    __slots__ = ("_buckets", "_default", "_header", "entries")

    def __init__(self, entries: tuple[Entry, ...]) -> None:
        self.entries = entries
        self._header: str | None = None
        self._buckets: dict[str, tuple[Entry, ...]] = {}
        self._default = entries
        names = Counter(
            h.name
            for e in entries
            if e.match is not None
            for h in e.match.source.headers
            if h.match.kind is MatchKind.EXACT
        )
        if not names:
            return
        name, count = names.most_common(1)[0]
        if count < _SPLIT_MIN:
            return
        self._header = name
        values = {v for e in entries if (v := _exact_header(e, name)) is not None}
        self._buckets = {
            v: tuple(e for e in entries if _exact_header(e, name) in (v, None)) for v in values
        }
        self._default = tuple(e for e in entries if _exact_header(e, name) is None)

    def for_request(self, attrs: RequestAttributes) -> tuple[Entry, ...]:
        if self._header is None:
            return self.entries
        value = attrs.headers.get(self._header)
        if value is None:
            return self._default
        return self._buckets.get(value, self._default)


_SPLIT_MIN = 4  # below this a linear scan is as fast as a dict lookup


class RouteTable:
    """The compiled routes of one host."""

    __slots__ = ("_by_key", "_entries", "_root", "host")

    def __init__(self, host_routes: HostRoutes) -> None:
        self.host = host_routes.host
        entries: list[tuple[tuple[object, ...], Route, CompiledMatch | None]] = []
        for pos, route in enumerate(host_routes.routes):
            compiled: list[CompiledMatch | None] = [compile_match(m) for m in route.matches]
            compiled = compiled or [None]
            for k, cm in enumerate(compiled):
                if route.precedence is Precedence.SPECIFICITY and cm is not None:
                    neg = tuple(-x for x in cm.specificity)
                    sort_key: tuple[object, ...] = (neg, route.order, k)
                else:
                    sort_key = ((), (), pos, k)
                entries.append((sort_key, route, cm))
        entries.sort(key=lambda e: e[0])
        self._entries = tuple(Entry(r, cm, i) for i, (_, r, cm) in enumerate(entries))
        by_key: dict[str, list[Entry]] = {}
        for e in self._entries:
            by_key.setdefault(index_key(e.match.source) if e.match else "", []).append(e)
        # Each key's candidates are its own entries and those of every ancestor key
        # (a path prefix at an element boundary), in rank order: a request looks up
        # the deepest key its path has and walks that one list.
        self._by_key: dict[str, _Candidates] = {}
        for ikey in by_key:
            ancestors = [k for k in by_key if k == ikey or _is_ancestor(k, ikey)]
            merged = sorted((e for k in ancestors for e in by_key[k]), key=lambda e: e.rank)
            self._by_key[ikey] = _Candidates(tuple(merged))
        self._root = self._by_key.get("", _Candidates(()))

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def best(self, attrs: RequestAttributes) -> RouteHit | None:
        """The winning route for ``attrs``, or None when nothing matches."""
        candidates = self._root
        by_key = self._by_key
        for prefix in path_prefixes(attrs.path):
            found = by_key.get(prefix)
            if found is not None:
                candidates = found
                break
        for e in candidates.for_request(attrs):
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
