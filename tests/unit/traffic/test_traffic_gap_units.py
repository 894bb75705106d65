"""The pure parts of the inference gaps: where the body names the model and how it
is rewritten, the wait line by criticality, endpoint choice under a pool limit,
and the generated consistent-hash cookie."""

from __future__ import annotations

import json
import random

import pytest

from meshlet.clock import ManualClock
from meshlet.config.inference import Criticality
from meshlet.config.routing import LbAlgorithm, LoadBalancer, TrafficPolicy
from meshlet.config.source import parse_yaml
from meshlet.errors import ConfigError
from meshlet.traffic.balancer import Endpoint, hash_key, session_cookie
from meshlet.traffic.cluster import ClusterState
from meshlet.traffic.inference import SlotQueue, free_slots
from meshlet.traffic.loader import build_routing
from meshlet.traffic.match import RequestAttributes
from meshlet.traffic.model_name import (
    ModelFieldScanner,
    ScanState,
    path_with_model,
    rewrite_model,
)
from meshlet.traffic.router import Router

CRIT, STD, SHED = Criticality.CRITICAL, Criticality.STANDARD, Criticality.SHEDDABLE

# -- model field span and rewrite ----------------------------------------------

BODY = (
    b'{"messages": [{"role": "user", "content": "a \\"model\\": x"}],'
    b' "model" : "ch\\u0061t", "max_tokens": 4}'
)


def _scan(body: bytes, chunk: int) -> tuple[str | None, tuple[int, int] | None]:
    scanner = ModelFieldScanner()
    for i in range(0, len(body), chunk):
        found = scanner.feed(body[i : i + chunk], end=i + chunk >= len(body))
        if found.state is not ScanState.NEED_MORE:
            return found.model, found.span
    return None, None


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10_000])
def test_span_is_the_model_token_in_any_chunking(chunk: int) -> None:
    model, span = _scan(BODY, chunk)
    assert model == "chat"
    assert span is not None
    assert BODY[span[0] : span[1]] == b'"ch\\u0061t"'


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("chat-v1", id="longer"),
        pytest.param("c", id="shorter"),
        pytest.param('lora "q" \\ é', id="needs-escapes"),
    ],
)
def test_rewrite_changes_only_the_model(target: str) -> None:
    _, span = _scan(BODY, 5)
    assert span is not None
    new = rewrite_model(BODY, span, target)
    before, after = json.loads(BODY), json.loads(new)
    assert after.pop("model") == target
    before.pop("model")
    assert after == before
    assert new[: span[0]] == BODY[: span[0]]
    assert new.endswith(BODY[span[1] :])


def test_rewrite_refuses_a_span_that_is_not_a_string_token() -> None:
    with pytest.raises(AssertionError, match="BUG"):
        rewrite_model(b'{"model": "x"}', (0, 3), "y")


def test_no_span_when_the_model_is_not_found() -> None:
    found = ModelFieldScanner().feed(b'{"prompt": "hi"}', end=True)
    assert found.state is ScanState.ABSENT
    assert found.span is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/v2/models/chat/infer", "/v2/models/chat-v2/infer"),
        ("/v2/models/chat/versions/3/infer?x=1", "/v2/models/chat-v2/versions/3/infer?x=1"),
        ("/v2/models/chat", "/v2/models/chat-v2"),
        ("/v2/models/chat?q", "/v2/models/chat-v2?q"),
        ("/v2/models/chatty/infer", None),
        ("/v1/chat/completions", None),
    ],
)
def test_kserve_path_gets_the_target_model(target: str, expected: str | None) -> None:
    assert path_with_model(target, "chat", "chat-v2") == expected


def test_kserve_path_target_is_percent_encoded_as_a_segment() -> None:
    assert path_with_model("/v2/models/m/infer", "m", "a b/c:d") == "/v2/models/a%20b%2Fc:d/infer"


# -- the wait line -------------------------------------------------------------


def test_line_serves_critical_then_standard_then_sheddable_fifo_within() -> None:
    q: SlotQueue[str] = SlotQueue()
    for name, c in [("s1", SHED), ("d1", STD), ("c1", CRIT), ("d2", STD), ("c2", CRIT)]:
        q.push(name, c)
    q.push("c0", CRIT, front=True)  # lost its slot: ahead of its criticality
    assert list(q) == ["c0", "c1", "c2", "d1", "d2", "s1"]
    assert len(q) == 6
    assert "d2" in q
    assert q.remove("d2")
    assert not q.remove("d2")
    assert "d2" not in q
    q.clear()
    assert len(q) == 0
    assert not q


def test_release_never_hands_out_more_than_the_free_slots() -> None:
    q: SlotQueue[str] = SlotQueue()
    for i in range(5):
        q.push(f"r{i}", STD)
    # Two endpoints, limit 2: one slot free.
    first = q.release([2, 1], 2, free_connections=100)
    assert first.send == ("r0",)
    assert first.shed == ()
    assert len(q) == 4
    # Nothing free: nobody leaves (Standard waits).
    assert q.release([2, 2], 2, free_connections=100).send == ()
    # Slots free but connections are the bound.
    assert q.release([0, 0], 2, free_connections=1).send == ("r1",)
    # No pool limit: only connections bound it.
    assert q.release([], None, free_connections=2).send == ("r2", "r3")


def test_release_sheds_sheddable_ones_once_the_pool_is_full() -> None:
    q: SlotQueue[str] = SlotQueue()
    q.push("batch1", SHED)  # queued for a connection while the pool had room
    q.push("batch2", SHED)
    q.push("chat", CRIT)
    out = q.release([1, 0], 1, free_connections=5)
    assert out.send == ("chat",)  # the one free slot goes to Critical
    assert out.shed == ("batch1", "batch2")  # the pool is now full
    assert len(q) == 0


def test_sheddable_waits_while_only_connections_are_short() -> None:
    q: SlotQueue[str] = SlotQueue()
    q.push("batch", SHED)
    out = q.release([0, 0], 1, free_connections=0)
    assert out.send == ()
    assert out.shed == ()  # the pool has room: it waits for a connection
    assert list(q) == ["batch"]


def test_free_slots() -> None:
    assert free_slots([3, 0, 5], 4) == 5
    assert free_slots([1], None) is None
    assert free_slots([], 4) == 0


# -- endpoint choice under a pool limit -----------------------------------------


def test_choose_never_picks_an_endpoint_at_the_pool_limit() -> None:
    clock = ManualClock()
    a, b = Endpoint(address="10.0.0.1:80"), Endpoint(address="10.0.0.2:80")
    state = ClusterState(TrafficPolicy(), [a, b], clock.monotonic())
    rng = random.Random(7)
    assert state.choose(clock.monotonic(), rng, limit_per_endpoint=1) is not None
    second = state.choose(clock.monotonic(), rng, limit_per_endpoint=1)
    assert second is not None
    assert state.outstanding() == {a.address: 1, b.address: 1}
    assert state.choose(clock.monotonic(), rng, limit_per_endpoint=1) is None
    clock.advance(0.5)
    state.record(a, 0.5, 200, clock.monotonic())
    for _ in range(20):  # only ``a`` has room, whatever the draws
        picked = state.choose(clock.monotonic(), rng, limit_per_endpoint=1)
        assert picked == a
        state.record(a, 0.1, 200, clock.monotonic())


# -- the generated consistent-hash cookie ---------------------------------------

COOKIE_DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inference, namespace: ml}
spec:
  host: inference
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 90s, path: /v1}}}
"""


def _attrs(cookie: str | None = None) -> RequestAttributes:
    headers = {} if cookie is None else {"cookie": cookie}
    return RequestAttributes.build(
        host="inference", method="POST", target="/v1/chat", headers=headers
    )


def test_destination_rule_cookie_ttl_and_path_are_read() -> None:
    lb = build_routing(parse_yaml(COOKIE_DR, "r.yaml")).destinations["inference"].policy
    assert lb.load_balancer.hash_cookie == "session"
    assert lb.load_balancer.hash_cookie_ttl_s == 90.0
    assert lb.load_balancer.hash_cookie_path == "/v1"


def test_a_bad_cookie_ttl_is_refused_with_its_location() -> None:
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+: .*ttl"):
        build_routing(parse_yaml(COOKIE_DR.replace("90s", "soon"), "r.yaml"))


def test_plan_generates_a_cookie_only_when_the_request_has_none() -> None:
    router = Router(build_routing(parse_yaml(COOKIE_DR, "r.yaml")))
    rng = random.Random(1)
    plan = router.plan(_attrs(), rng)
    assert plan.hash_key is not None
    assert plan.set_cookie == f'session="{plan.hash_key}"; Max-Age=90; Path=/v1; HttpOnly'
    # The client sends it back (quoted, as set): the same key, nothing set again.
    back = router.plan(_attrs(f'other=1; session="{plan.hash_key}"'), rng)
    assert back.hash_key == plan.hash_key
    assert back.set_cookie is None
    fresh = router.plan(_attrs(), rng)
    assert fresh.hash_key != plan.hash_key  # another client: another session


@pytest.mark.parametrize(
    ("ttl_s", "path", "expected_attrs"),
    [
        pytest.param(0.0, None, "; HttpOnly", id="session-cookie"),
        pytest.param(3600.0, "/", "; Max-Age=3600; Path=/; HttpOnly", id="ttl-and-path"),
    ],
)
def test_session_cookie_attributes(ttl_s: float, path: str | None, expected_attrs: str) -> None:
    lb = LoadBalancer(
        algorithm=LbAlgorithm.RING_HASH,
        hash_cookie="s",
        hash_cookie_ttl_s=ttl_s,
        hash_cookie_path=path,
    )
    made = session_cookie(lb, random.Random(3))
    assert made is not None
    assert len(made.value) == 16
    assert made.set_cookie == f's="{made.value}"{expected_attrs}'


def test_no_cookie_is_generated_without_a_ttl() -> None:
    lb = LoadBalancer(algorithm=LbAlgorithm.RING_HASH, hash_cookie="s")
    assert session_cookie(lb, random.Random(3)) is None
    router = Router(build_routing(parse_yaml(COOKIE_DR.replace(", ttl: 90s", ""), "r.yaml")))
    plan = router.plan(_attrs(), random.Random(1))
    assert plan.hash_key is None
    assert plan.set_cookie is None


def test_hash_key_reads_plain_and_quoted_cookie_values_alike() -> None:
    lb = LoadBalancer(algorithm=LbAlgorithm.RING_HASH, hash_cookie="s")
    assert hash_key(lb, _attrs("s=abc")) == "abc"
    assert hash_key(lb, _attrs('s="abc"')) == "abc"
    assert hash_key(lb, _attrs('s="')) == '"'
