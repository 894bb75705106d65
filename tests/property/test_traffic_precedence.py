"""Property: the route a table picks is never less specific than another match
(Gateway API precedence), and agrees with a naive reference; for Istio it is the
first match in order. Also: the segment index never changes the answer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.config.routing import (
    Destination,
    HostRoutes,
    KeyMatch,
    MatchKind,
    Precedence,
    Route,
    RouteMatch,
    StringMatch,
)
from meshlet.traffic.match import RequestAttributes, compile_match
from meshlet.traffic.table import RouteTable

SEGMENTS = st.sampled_from(["a", "b", "v2", "models"])
PATHS = st.lists(SEGMENTS, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
HEADER_NAMES = st.sampled_from(["x-a", "x-b", "x-model-name"])
VALUES = st.sampled_from(["1", "2"])


@st.composite
def route_matches(draw: st.DrawFn, gateway: bool) -> RouteMatch:
    kinds = [MatchKind.EXACT, MatchKind.PATH_PREFIX if gateway else MatchKind.PREFIX]
    kind = draw(st.sampled_from([*kinds, MatchKind.REGEX]))
    path = draw(PATHS)
    uri: StringMatch | None = StringMatch(
        kind=kind, value=path if kind is not MatchKind.REGEX else path + ".*"
    )
    if not gateway and draw(st.booleans()):
        uri = None
    names = draw(st.lists(HEADER_NAMES, unique=True, max_size=2))
    headers = tuple(
        KeyMatch(name=n, match=StringMatch(kind=MatchKind.EXACT, value=draw(VALUES))) for n in names
    )
    queries = tuple(
        KeyMatch(name=n, match=StringMatch(kind=MatchKind.EXACT, value=draw(VALUES)))
        for n in draw(st.lists(st.sampled_from(["q", "r"]), unique=True, max_size=1))
    )
    method = draw(st.sampled_from([None, "GET", "POST"]))
    return RouteMatch(
        uri=uri,
        headers=headers,
        query_params=queries,
        method=StringMatch(kind=MatchKind.EXACT, value=method) if method else None,
    )


@st.composite
def tables(draw: st.DrawFn, gateway: bool) -> list[Route]:
    n = draw(st.integers(min_value=1, max_value=8))
    routes = []
    for i in range(n):
        owner = draw(st.sampled_from(["ns/a", "ns/b", "ns/c"]))
        ts = draw(st.sampled_from(["", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]))
        matches = tuple(draw(st.lists(route_matches(gateway), min_size=1, max_size=3)))
        routes.append(
            Route(
                name=f"r{i}",
                source="t:1",
                order=(ts, owner, i),
                precedence=Precedence.SPECIFICITY if gateway else Precedence.ORDERED,
                matches=matches,
                destinations=(Destination(host=f"r{i}"),),
            )
        )
    return routes


@st.composite
def requests(draw: st.DrawFn) -> RequestAttributes:
    headers = {n: draw(VALUES) for n in draw(st.lists(HEADER_NAMES, unique=True, max_size=3))}
    query = "&".join(
        f"{n}={draw(VALUES)}"
        for n in draw(st.lists(st.sampled_from(["q", "r"]), unique=True, max_size=2))
    )
    path = draw(PATHS)
    return RequestAttributes.build(
        host="svc",
        method=draw(st.sampled_from(["GET", "POST"])),
        target=path + ("?" + query if query else ""),
        headers=headers,
    )


@settings(max_examples=200, deadline=None)
@given(routes=tables(gateway=True), attrs=requests())
def test_gateway_best_route_is_never_less_specific(
    routes: list[Route], attrs: RequestAttributes
) -> None:
    table = RouteTable(HostRoutes(host="svc", routes=tuple(routes)))
    hit = table.best(attrs)
    matching = [(compile_match(m), r) for r in routes for m in r.matches if compile_match(m)(attrs)]
    if not matching:
        assert hit is None
        return
    assert hit is not None
    assert hit.match is not None
    assert all(hit.match.specificity >= cm.specificity for cm, _ in matching)
    # The naive reference: max specificity, then the oldest / alphabetical / first rule.
    ref = min(matching, key=lambda p: (tuple(-x for x in p[0].specificity), p[1].order))
    assert hit.route.name == ref[1].name


@settings(max_examples=200, deadline=None)
@given(routes=tables(gateway=False), attrs=requests())
def test_virtual_service_picks_the_first_matching_route(
    routes: list[Route], attrs: RequestAttributes
) -> None:
    table = RouteTable(HostRoutes(host="svc", routes=tuple(routes)))
    hit = table.best(attrs)
    first = next((r for r in routes if any(compile_match(m)(attrs) for m in r.matches)), None)
    assert (hit.route.name if hit else None) == (first.name if first else None)
