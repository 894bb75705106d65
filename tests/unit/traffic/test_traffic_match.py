"""Matchers, route tables (both precedence models) and host lookup."""

from __future__ import annotations

import pytest

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
from meshlet.traffic.match import RequestAttributes, compile_match, compile_string, specificity
from meshlet.traffic.table import HostIndex, RouteTable


def sm(kind: MatchKind, value: str = "") -> StringMatch:
    return StringMatch(kind=kind, value=value)


def req(
    path: str = "/", method: str = "GET", host: str = "svc", **headers: str
) -> RequestAttributes:
    return RequestAttributes.build(
        host=host,
        method=method,
        target=path,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


@pytest.mark.parametrize(
    ("kind", "value", "subject", "expected"),
    [
        pytest.param(MatchKind.EXACT, "/a", "/a", True, id="exact-hit"),
        pytest.param(MatchKind.EXACT, "/a", "/a/", False, id="exact-miss"),
        pytest.param(MatchKind.PREFIX, "/v2", "/v2x", True, id="istio-prefix-is-string-prefix"),
        pytest.param(MatchKind.PATH_PREFIX, "/v2", "/v2x", False, id="gw-prefix-whole-element"),
        pytest.param(MatchKind.PATH_PREFIX, "/v2", "/v2/m", True, id="gw-prefix-child"),
        pytest.param(MatchKind.PATH_PREFIX, "/v2", "/v2", True, id="gw-prefix-self"),
        pytest.param(MatchKind.PATH_PREFIX, "/", "/anything", True, id="gw-prefix-root"),
        pytest.param(MatchKind.REGEX, "/v[0-9]+/.*", "/v12/x", True, id="regex-full"),
        pytest.param(MatchKind.REGEX, "v[0-9]", "/v1", False, id="regex-must-match-whole"),
        pytest.param(MatchKind.PRESENT, "", "anything", True, id="present"),
    ],
)
def test_string_matchers(kind: MatchKind, value: str, subject: str, expected: bool) -> None:
    assert compile_string(sm(kind, value))(subject) is expected


def test_ignore_uri_case() -> None:
    m = compile_match(RouteMatch(uri=sm(MatchKind.PREFIX, "/API"), ignore_uri_case=True))
    assert m(req("/api/x"))
    assert not compile_match(RouteMatch(uri=sm(MatchKind.PREFIX, "/API")))(req("/api/x"))


@pytest.mark.parametrize(
    ("match", "attrs", "expected"),
    [
        pytest.param(
            RouteMatch(headers=(KeyMatch(name="x-user", match=sm(MatchKind.EXACT, "a")),)),
            req(x_user="a"),
            True,
            id="header-exact",
        ),
        pytest.param(
            RouteMatch(headers=(KeyMatch(name="x-user", match=sm(MatchKind.EXACT, "a")),)),
            req(),
            False,
            id="header-absent",
        ),
        pytest.param(
            RouteMatch(headers=(KeyMatch(name="x-user", match=sm(MatchKind.PREFIX, "ad")),)),
            req(x_user="admin"),
            True,
            id="header-prefix",
        ),
        pytest.param(
            RouteMatch(headers=(KeyMatch(name="x-user", match=sm(MatchKind.REGEX, "a.+")),)),
            req(x_user="a"),
            False,
            id="header-regex",
        ),
        pytest.param(
            RouteMatch(headers=(KeyMatch(name="x-user", match=sm(MatchKind.PRESENT)),)),
            req(x_user=""),
            True,
            id="header-present-empty",
        ),
        pytest.param(
            RouteMatch(method=sm(MatchKind.EXACT, "POST")), req(method="post"), True, id="method"
        ),
        pytest.param(
            RouteMatch(method=sm(MatchKind.EXACT, "POST")), req(), False, id="method-miss"
        ),
        pytest.param(
            RouteMatch(query_params=(KeyMatch(name="v", match=sm(MatchKind.EXACT, "2")),)),
            req("/p?v=2&x=1"),
            True,
            id="query",
        ),
        pytest.param(
            RouteMatch(query_params=(KeyMatch(name="v", match=sm(MatchKind.EXACT, "2")),)),
            req("/p?v=3"),
            False,
            id="query-miss",
        ),
        pytest.param(
            RouteMatch(without_headers=(KeyMatch(name="x-debug", match=sm(MatchKind.PRESENT)),)),
            req(x_debug="1"),
            False,
            id="without-headers-present",
        ),
        pytest.param(
            RouteMatch(without_headers=(KeyMatch(name="x-debug", match=sm(MatchKind.PRESENT)),)),
            req(),
            True,
            id="without-headers-absent",
        ),
        pytest.param(
            RouteMatch(authority=sm(MatchKind.EXACT, "svc")),
            req(host="SVC:8080"),
            True,
            id="authority-port-stripped",
        ),
    ],
)
def test_route_match_conditions(
    match: RouteMatch, attrs: RequestAttributes, expected: bool
) -> None:
    assert compile_match(match)(attrs) is expected


def test_model_name_is_matched_like_a_header() -> None:
    m = compile_match(
        RouteMatch(headers=(KeyMatch(name="x-model-name", match=sm(MatchKind.EXACT, "llama")),))
    )
    attrs = RequestAttributes.build(host="h", method="POST", target="/v1/chat", model_name="llama")
    assert attrs.model_name == "llama"
    assert m(attrs)


def route(
    name: str,
    *matches: RouteMatch,
    precedence: Precedence = Precedence.ORDERED,
    order: tuple[str, str, int] = ("", "ns/r", 0),
) -> Route:
    return Route(
        name=name,
        source="t:1",
        order=order,
        precedence=precedence,
        matches=matches,
        destinations=(Destination(host=name),),
    )


def test_virtual_service_first_match_wins_in_order() -> None:
    table = RouteTable(
        HostRoutes(
            host="svc",
            routes=(
                route("broad", RouteMatch(uri=sm(MatchKind.PREFIX, "/"))),
                route("narrow", RouteMatch(uri=sm(MatchKind.EXACT, "/v2/infer"))),
            ),
        )
    )
    hit = table.best(req("/v2/infer"))
    assert hit is not None
    assert hit.route.name == "broad"  # Istio: order, not specificity


def test_catch_all_route_without_match() -> None:
    table = RouteTable(
        HostRoutes(
            host="svc",
            routes=(route("a", RouteMatch(uri=sm(MatchKind.EXACT, "/a"))), route("rest")),
        )
    )
    assert [table.best(req(p)).route.name for p in ("/a", "/b")] == ["a", "rest"]  # type: ignore[union-attr]


def test_no_match_gives_none() -> None:
    table = RouteTable(
        HostRoutes(host="svc", routes=(route("a", RouteMatch(uri=sm(MatchKind.EXACT, "/a"))),))
    )
    assert table.best(req("/b")) is None


def gw(name: str, m: RouteMatch, order: tuple[str, str, int] = ("", "ns/r", 0)) -> Route:
    return route(name, m, precedence=Precedence.SPECIFICITY, order=order)


@pytest.mark.parametrize(
    ("routes", "attrs", "winner"),
    [
        pytest.param(
            [
                gw("prefix", RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/v2"))),
                gw("exact", RouteMatch(uri=sm(MatchKind.EXACT, "/v2/infer"))),
            ],
            req("/v2/infer"),
            "exact",
            id="exact-beats-prefix",
        ),
        pytest.param(
            [
                gw("short", RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/v2"))),
                gw("long", RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/v2/models"))),
            ],
            req("/v2/models/x"),
            "long",
            id="longest-prefix",
        ),
        pytest.param(
            [
                gw("plain", RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/"))),
                gw(
                    "method",
                    RouteMatch(
                        uri=sm(MatchKind.PATH_PREFIX, "/"), method=sm(MatchKind.EXACT, "POST")
                    ),
                ),
            ],
            req("/", "POST"),
            "method",
            id="method-beats-none",
        ),
        pytest.param(
            [
                gw(
                    "one",
                    RouteMatch(
                        uri=sm(MatchKind.PATH_PREFIX, "/"),
                        headers=(KeyMatch(name="a", match=sm(MatchKind.EXACT, "1")),),
                    ),
                ),
                gw(
                    "two",
                    RouteMatch(
                        uri=sm(MatchKind.PATH_PREFIX, "/"),
                        headers=(
                            KeyMatch(name="a", match=sm(MatchKind.EXACT, "1")),
                            KeyMatch(name="b", match=sm(MatchKind.EXACT, "2")),
                        ),
                    ),
                ),
            ],
            req(a="1", b="2"),
            "two",
            id="more-headers",
        ),
        pytest.param(
            [
                gw(
                    "young",
                    RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/")),
                    order=("2025-01-01T00:00:00Z", "a/a", 0),
                ),
                gw(
                    "old",
                    RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/")),
                    order=("2020-01-01T00:00:00Z", "z/z", 0),
                ),
            ],
            req("/"),
            "old",
            id="oldest-route-on-tie",
        ),
        pytest.param(
            [
                gw("b", RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/")), order=("", "ns/b", 0)),
                gw("a", RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/")), order=("", "ns/a", 0)),
            ],
            req("/"),
            "a",
            id="alphabetical-on-tie",
        ),
        pytest.param(
            [
                gw("regex", RouteMatch(uri=sm(MatchKind.REGEX, "/v2/.*"))),
                gw("prefix", RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/v"))),
            ],
            req("/v/x"),
            "prefix",
            id="prefix-beats-regex",
        ),
    ],
)
def test_gateway_api_precedence(routes: list[Route], attrs: RequestAttributes, winner: str) -> None:
    table = RouteTable(HostRoutes(host="svc", routes=tuple(routes)))
    hit = table.best(attrs)
    assert hit is not None
    assert hit.route.name == winner
    # The index must not change the answer: the unindexed scan agrees.
    assert table.all_matches(attrs)[0].route.name == winner


def test_specificity_key_order() -> None:
    exact = specificity(RouteMatch(uri=sm(MatchKind.EXACT, "/a")))
    long_prefix = specificity(RouteMatch(uri=sm(MatchKind.PATH_PREFIX, "/aaaaaaaa")))
    assert exact > long_prefix


def test_segment_index_keeps_wildcards_in_rank_order() -> None:
    # An Istio prefix that ends mid-element ("/v") cannot be indexed and must still
    # win over a later, indexed route.
    table = RouteTable(
        HostRoutes(
            host="svc",
            routes=(
                route("midword", RouteMatch(uri=sm(MatchKind.PREFIX, "/v"))),
                route("indexed", RouteMatch(uri=sm(MatchKind.PREFIX, "/v2/"))),
            ),
        )
    )
    hit = table.best(req("/v2/x"))
    assert hit is not None
    assert hit.route.name == "midword"


def test_host_index_short_names_and_wildcards() -> None:
    idx = HostIndex(
        {
            "inference.ml.svc.cluster.local": HostRoutes(
                host="inference.ml.svc.cluster.local", routes=(route("fq"),)
            ),
            "*.example.com": HostRoutes(host="*.example.com", routes=(route("wild"),)),
            "api": HostRoutes(host="api", routes=(route("api"),)),
        }
    )
    assert idx.lookup("inference") is idx.lookup("inference.ml.svc.cluster.local")
    assert idx.lookup("api.other.svc.cluster.local") is idx.lookup("api")
    wild = idx.lookup("a.example.com")
    assert wild is not None
    assert wild.host == "*.example.com"
    assert idx.lookup("unknown") is None


def test_index_buckets_by_model_header_without_changing_the_answer() -> None:
    def by_model(name: str, model: str | None, prefix: str = "/v1/") -> Route:
        headers = (
            ()
            if model is None
            else (KeyMatch(name="x-model-name", match=sm(MatchKind.EXACT, model)),)
        )
        return route(name, RouteMatch(uri=sm(MatchKind.PREFIX, prefix), headers=headers))

    routes = [by_model(f"m{i}", f"model-{i}") for i in range(6)]
    routes.insert(3, by_model("any-v1", None))  # no model condition: in every bucket
    routes.append(route("regex", RouteMatch(uri=sm(MatchKind.REGEX, "/v1/re[a-z]+"))))
    table = RouteTable(HostRoutes(host="svc", routes=tuple(routes)))
    for model, winner in (("model-1", "m1"), ("model-5", "any-v1"), ("zzz", "any-v1")):
        a = RequestAttributes.build(host="svc", method="GET", target="/v1/x", model_name=model)
        hit = table.best(a)
        assert hit is not None
        assert hit.route.name == winner
    miss = RequestAttributes.build(host="svc", method="GET", target="/v2/x")
    assert table.best(miss) is None
    regex = table.best(RequestAttributes.build(host="svc", method="GET", target="/v1/rex"))
    assert regex is not None
    assert regex.route.name == "any-v1"  # earlier in order than the regex route


def test_attributes_from_a_request_head_join_repeated_headers() -> None:
    a = RequestAttributes.from_head(
        host="Svc:80",
        method=b"post",
        target=b"/p?x=1",
        headers=[(b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", b"\xe9")],
        model_name="m",
    )
    assert a.headers["x-a"] == "1, 2"
    assert a.headers["x-b"] == "\u00e9"
    assert (a.host, a.method, a.path, a.query, a.model_name) == (
        "svc",
        "POST",
        "/p",
        {"x": "1"},
        "m",
    )
