"""Request attribute helpers: path normalization (RFC 3986, Istio's BASE) and hosts."""

from __future__ import annotations

import pytest

from meshlet.policy.attributes import namespace_of, normalize_path, strip_port, strip_spiffe


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        pytest.param("/v1/models", "/v1/models", id="plain"),
        pytest.param("/a?token=x", "/a", id="query-dropped"),
        pytest.param("/a#frag", "/a", id="fragment-dropped"),
        pytest.param("/public/../admin", "/admin", id="dot-dot"),
        pytest.param("/public/%2e%2E/admin", "/admin", id="encoded-dot-dot"),
        pytest.param("/a/./b/", "/a/b/", id="dot"),
        pytest.param("/a/b/..", "/a/", id="trailing-dot-dot"),
        pytest.param("/../../x", "/x", id="above-root"),
        pytest.param("/%41dmin", "/Admin", id="unreserved-decoded"),
        pytest.param("/a%2fb", "/a%2Fb", id="slash-kept-uppercased"),
        pytest.param("/a%zz", "/a%zz", id="bad-escape-kept"),
        pytest.param("", "/", id="empty"),
    ],
)
def test_normalize_path(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


@pytest.mark.parametrize(
    ("host", "name"),
    [("a.b", "a.b"), ("a.b:8000", "a.b"), ("a.b:*", "a.b"), ("[::1]:80", "[::1]"),
     ("::1", "::1"), ("a.b:x", "a.b:x")],
)  # fmt: skip
def test_strip_port(host: str, name: str) -> None:
    assert strip_port(host) == name


def test_principal_helpers() -> None:
    assert strip_spiffe("spiffe://td/ns/a/sa/b") == "td/ns/a/sa/b"
    assert namespace_of("td/ns/a/sa/b") == "a"
    assert namespace_of("td/sa/b") is None
    assert namespace_of(None) is None
