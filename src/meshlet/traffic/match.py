"""Request attributes and compiled matchers.

A ``RouteMatch`` from config is compiled once into a ``CompiledMatch``: a tuple of
small predicates over ``RequestAttributes`` plus its ``specificity``, the key that
Gateway API's precedence rules sort by. Compiling keeps the hot path free of
enum dispatch and regex compilation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from meshlet.config.routing import KeyMatch, MatchKind, RouteMatch, StringMatch

MODEL_HEADER = "x-model-name"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAttributes:
    """What routing may look at. Header names are lowercase; repeated headers are
    joined with ``,`` (RFC 9110 §5.3). ``path`` excludes the query."""

    host: str
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    source_ip: str = ""
    raw_query: str = ""  # as received, so a rewrite forwards it byte for byte

    @classmethod
    def build(
        cls,
        *,
        host: str,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        source_ip: str = "",
        model_name: str | None = None,
    ) -> RequestAttributes:
        """From a request line's origin-form target; the model name, when known,
        is exposed as the ``x-model-name`` header so routes match on it."""
        path, _, query = target.partition("?")
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if model_name is not None:
            hdrs[MODEL_HEADER] = model_name
        host = host.lower()
        # Drop the port: "[v6]:port" keeps its brackets, "name:port" loses ":port".
        host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
        return cls(
            host=host,
            method=method.upper(),
            path=path or "/",
            query=dict(parse_qsl(query, keep_blank_values=True)) if query else {},
            headers=hdrs,
            source_ip=source_ip,
            raw_query=query,
        )

    @classmethod
    def from_head(
        cls,
        *,
        host: str,
        method: bytes,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        source_ip: str = "",
        model_name: str | None = None,
    ) -> RequestAttributes:
        """From an ``http1.events.Request`` head: names are already lowercase bytes;
        repeated headers are joined with ", " (RFC 9110 §5.3). Latin-1 keeps every
        byte (RFC 9110 §5.5: field values are octets)."""
        joined: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        return cls.build(
            host=host,
            method=method.decode("latin-1"),
            target=target.decode("latin-1"),
            headers=joined,
            source_ip=source_ip,
            model_name=model_name,
        )

    @property
    def model_name(self) -> str | None:
        return self.headers.get(MODEL_HEADER)


Predicate = Callable[[RequestAttributes], bool]
StrTest = Callable[[str], bool]


def compile_string(m: StringMatch, *, ignore_case: bool = False) -> StrTest:
    value = m.value.lower() if ignore_case else m.value
    if m.kind is MatchKind.EXACT:
        test: StrTest = value.__eq__
    elif m.kind is MatchKind.PREFIX:
        test = lambda s: s.startswith(value)  # noqa: E731 - a tiny closure is the point
    elif m.kind is MatchKind.PATH_PREFIX:
        if value in ("", "/"):
            test = lambda s: True  # noqa: E731
        else:
            n = len(value)
            test = lambda s: s.startswith(value) and (len(s) == n or s[n] == "/")  # noqa: E731
    elif m.kind is MatchKind.REGEX:
        # Istio's and Envoy's regexes (RE2) must match the whole value.
        full = re.compile(m.value, re.IGNORECASE if ignore_case else 0).fullmatch
        return lambda s: full(s) is not None
    else:
        return lambda s: True
    if ignore_case:
        return lambda s: test(s.lower())
    return test


def _header(k: KeyMatch) -> Predicate:
    name, test = k.name, compile_string(k.match)

    def check(a: RequestAttributes) -> bool:
        v = a.headers.get(name)
        return v is not None and test(v)

    return check


def _query(k: KeyMatch) -> Predicate:
    name, test = k.name, compile_string(k.match)

    def check(a: RequestAttributes) -> bool:
        v = a.query.get(name)
        return v is not None and test(v)

    return check


def _without(k: KeyMatch) -> Predicate:
    has = _header(k)
    return lambda a: not has(a)


# Path ranks for Gateway API precedence: Exact beats any prefix; the spec leaves
# RegularExpression to the implementation, and meshlet ranks it below prefixes
# (like Envoy Gateway's "regex after prefix" is not universal, ranking it last is
# the choice that can never shadow an explicit Exact or PathPrefix route).
_PATH_RANK = {
    MatchKind.EXACT: 3,
    MatchKind.PATH_PREFIX: 2,
    MatchKind.PREFIX: 2,
    MatchKind.REGEX: 1,
    MatchKind.PRESENT: 0,
}

Specificity = tuple[int, int, int, int, int]


def specificity(m: RouteMatch) -> Specificity:
    """Gateway API HTTPRouteRule precedence, most important first: Exact path, then
    the longest prefix, then a method match, then the most header matches, then the
    most query-parameter matches."""
    rank = _PATH_RANK[m.uri.kind] if m.uri else 0
    length = len(m.uri.value) if m.uri and rank in (2, 3) else 0
    return (rank, length, 1 if m.method else 0, len(m.headers), len(m.query_params))


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    predicates: tuple[Predicate, ...]
    specificity: Specificity
    source: RouteMatch

    def __call__(self, attrs: RequestAttributes) -> bool:
        return all(p(attrs) for p in self.predicates)


def compile_match(m: RouteMatch) -> CompiledMatch:
    preds: list[Predicate] = []
    if m.uri is not None and not (m.uri.kind is MatchKind.PATH_PREFIX and m.uri.value == "/"):
        uri = compile_string(m.uri, ignore_case=m.ignore_uri_case)
        preds.append(lambda a: uri(a.path))
    if m.method is not None:
        method = compile_string(m.method)
        preds.append(lambda a: method(a.method))
    if m.authority is not None:
        authority = compile_string(m.authority)
        preds.append(lambda a: authority(a.host))
    preds.extend(_header(h) for h in m.headers)
    preds.extend(_query(q) for q in m.query_params)
    preds.extend(_without(h) for h in m.without_headers)
    return CompiledMatch(tuple(preds), specificity(m), m)


_REGEX_META = frozenset(".^$*+?{}[]\\|()")


def _regex_literal_prefix(pattern: str) -> str:
    """The literal text every full match of ``pattern`` starts with ("" if unknown)."""
    if "|" in pattern:  # a top-level alternation could start anywhere
        return ""
    out: list[str] = []
    for ch in pattern:
        if ch in _REGEX_META:
            if ch in "*?{" and out:
                out.pop()  # the previous character is optional or repeated
            break
        out.append(ch)
    return "".join(out)


def index_key(m: RouteMatch) -> str:
    """The deepest path prefix, cut at an element boundary, that every path this
    match accepts starts with ("" = any path). The route table files entries under
    it and, per request, looks up the deepest such prefix of the request path."""
    if m.uri is None or m.ignore_uri_case:
        return ""
    kind, value = m.uri.kind, m.uri.value
    if kind is MatchKind.EXACT:
        return value if value.startswith("/") else ""
    if kind is MatchKind.PATH_PREFIX:
        return value.rstrip("/") if value.startswith("/") else ""
    literal = (
        value
        if kind is MatchKind.PREFIX
        else (_regex_literal_prefix(value) if kind is MatchKind.REGEX else "")
    )
    cut = literal.rfind("/")
    return literal[:cut] if cut > 0 else ""


def path_prefixes(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a/b/c", "/a/b", "/a"]``: deepest first, for ``index_key``."""
    out = [path]
    cut = path.rfind("/")
    while cut > 0:
        out.append(path[:cut])
        cut = path.rfind("/", 0, cut)
    return out
