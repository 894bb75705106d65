"""SPIFFE ID parsing: the valid shapes, and a table of invalid ones each refused by name."""

from __future__ import annotations

import pytest

from meshlet.errors import IdentityError
from meshlet.identity.spiffeid import SpiffeId


@pytest.mark.parametrize(
    ("text", "trust_domain", "path"),
    [
        pytest.param("spiffe://cluster.local", "cluster.local", "", id="trust-domain-only"),
        pytest.param(
            "spiffe://cluster.local/ns/default/sa/web",
            "cluster.local",
            "/ns/default/sa/web",
            id="workload",
        ),
        pytest.param("spiffe://a_b-c.d9/x", "a_b-c.d9", "/x", id="td-all-char-classes"),
        pytest.param(
            "spiffe://td/Az09.-_/...x/x..", "td", "/Az09.-_/...x/x..", id="path-char-classes"
        ),
    ],
)
def test_valid_ids_parse_and_round_trip(text: str, trust_domain: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert sid.trust_domain == trust_domain
    assert sid.path == path
    assert str(sid) == text
    assert SpiffeId.parse(str(sid)) == sid


def test_workload_shape_helpers() -> None:
    sid = SpiffeId.for_workload("cluster.local", "llm", "vllm")
    assert str(sid) == "spiffe://cluster.local/ns/llm/sa/vllm"
    assert sid.namespace == "llm"
    assert sid.service_account == "vllm"
    other = SpiffeId.parse("spiffe://cluster.local/agent/x")
    assert other.namespace is None
    assert other.service_account is None


def test_for_workload_validates_its_parts() -> None:
    with pytest.raises(IdentityError, match="characters outside"):
        SpiffeId.for_workload("cluster.local", "bad ns", "web")
    with pytest.raises(IdentityError, match="uppercase"):
        SpiffeId.for_workload("Cluster.local", "ns", "web")


LONG_PATH = "spiffe://td/" + "a" * 2040


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("cluster.local/ns/a", "no scheme", id="no-scheme"),
        pytest.param("https://cluster.local/ns/a", "is not 'spiffe'", id="wrong-scheme"),
        pytest.param("SPIFFE://cluster.local/ns/a", "lowercase", id="uppercase-scheme"),
        pytest.param("spiffe:/cluster.local/a", "no scheme", id="one-slash"),
        pytest.param("spiffe://", "trust domain is empty", id="empty-td"),
        pytest.param("spiffe:///ns/a", "trust domain is empty", id="empty-td-with-path"),
        pytest.param("spiffe://Cluster.local/a", "uppercase", id="uppercase-td"),
        pytest.param("spiffe://cluster.local:8080/a", "port", id="port"),
        pytest.param("spiffe://user@cluster.local/a", "userinfo", id="userinfo"),
        pytest.param("spiffe://clu%41ster/a", "percent-encoded", id="percent-td"),
        pytest.param("spiffe://clu ster/a", "outside", id="space-in-td"),
        pytest.param("spiffe://clüster/a", "outside", id="unicode-td"),
        pytest.param("spiffe://td/a?x=1", "query", id="query"),
        pytest.param("spiffe://td/a#frag", "fragment", id="fragment"),
        pytest.param("spiffe://td/", "trailing", id="trailing-slash-root"),
        pytest.param("spiffe://td/ns/a/", "trailing", id="trailing-slash"),
        pytest.param("spiffe://td//a", "empty segment", id="empty-segment"),
        pytest.param("spiffe://td/ns/./a", "relative segment '.'", id="dot-segment"),
        pytest.param("spiffe://td/ns/../a", r"relative segment '\.\.'", id="dotdot-segment"),
        pytest.param("spiffe://td/a%20b", "percent-encoded", id="percent-path"),
        pytest.param("spiffe://td/a b", "outside", id="space-in-path"),
        pytest.param("spiffe://td/a:b", "outside", id="colon-in-path"),
        pytest.param("spiffe://td/ñ", "outside", id="unicode-path"),
        pytest.param(LONG_PATH, "longer than 2048", id="too-long"),
        pytest.param("spiffe://" + "a" * 256 + "/x", "longer than 255", id="td-too-long"),
    ],
)
def test_invalid_ids_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(IdentityError, match=reason):
        SpiffeId.parse(text)


def test_limits_are_inclusive() -> None:
    at_limit = "spiffe://td/" + "a" * (2048 - len("spiffe://td/"))
    assert len(str(SpiffeId.parse(at_limit))) == 2048
    td255 = "a" * 255
    assert SpiffeId.parse(f"spiffe://{td255}/x").trust_domain == td255


def test_ids_are_values() -> None:
    a = SpiffeId.parse("spiffe://td/x")
    assert a == SpiffeId.parse("spiffe://td/x")
    assert hash(a) == hash(SpiffeId.parse("spiffe://td/x"))
    assert a != SpiffeId.parse("spiffe://td/y")
    with pytest.raises(AttributeError):
        a.path = "/z"  # type: ignore[misc]
