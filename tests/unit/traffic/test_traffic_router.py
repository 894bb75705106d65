"""Router.plan: weighted splits, rewrites, faults, mirrors, inference pools."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from meshlet.config.inference import Criticality
from meshlet.config.source import parse_yaml
from meshlet.errors import NoRoute
from meshlet.traffic.loader import build_routing
from meshlet.traffic.match import RequestAttributes
from meshlet.traffic.router import Router

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inf, namespace: ml}
spec:
  hosts: [inference]
  http:
  - match: [{headers: {x-tester: {exact: "yes"}}}]
    route: [{destination: {host: inference, subset: v2}}]
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/, authority: inference-v2}
    route: [{destination: {host: inference, subset: v1}}]
  - match: [{uri: {exact: /faulty}}]
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 50}}
      abort: {httpStatus: 503, percentage: {value: 20}}
    mirror: {host: shadow}
    mirrorPercentage: {value: 30}
    route: [{destination: {host: inference, subset: v1}}]
  - route:
    - {destination: {host: inference, subset: v1}, weight: 90}
    - {destination: {host: inference, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inf, namespace: ml}
spec:
  host: inference
  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session}}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: llm, namespace: ml}
spec:
  parentRefs: [{group: "", kind: Service, name: llm}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}}
    backendRefs: [{name: pool, group: inference.networking.k8s.io, kind: InferencePool}]
  - matches: [{path: {type: Exact, value: /full}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /other}}}
    backendRefs: [{name: llm}]
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec: {selector: {matchLabels: {app: vllm}}, targetPorts: [{number: 8000}]}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat}
spec:
  modelName: chat
  criticality: Critical
  poolRef: {name: pool}
  targetModels: [{name: chat-a, weight: 75}, {name: chat-b, weight: 25}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -5, poolRef: {name: pool}}
"""


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(build_routing(parse_yaml(ROUTES, "routes.yaml")))


def attrs(
    path: str = "/",
    host: str = "inference",
    method: str = "GET",
    model: str | None = None,
    **headers: str,
) -> RequestAttributes:
    return RequestAttributes.build(
        host=host,
        method=method,
        target=path,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        model_name=model,
    )


def within_binomial_bound(count: int, n: int, p: float, z: float = 5.0) -> bool:
    """|count - np| <= z * sqrt(np(1-p)): z = 5 makes a false failure ~1e-6."""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


def test_weighted_split_is_within_binomial_bound(router: Router) -> None:
    rng = random.Random(20240501)
    n = 4000
    subsets = Counter(router.plan(attrs("/x"), rng).backend.subset for _ in range(n))
    assert set(subsets) == {"v1", "v2"}
    assert within_binomial_bound(subsets["v2"], n, 0.10)
    # And the bound is tight enough to catch a wrong split (say 80/20).
    assert not within_binomial_bound(subsets["v2"], n, 0.20)


def test_header_override_for_testers(router: Router) -> None:
    plan = router.plan(attrs(x_tester="yes"), random.Random(1))
    assert plan.backend.subset == "v2"
    assert plan.cluster == "inference|v2"
    assert plan.policy.load_balancer.algorithm.value == "ROUND_ROBIN"


def test_istio_rewrite_replaces_matched_prefix_and_keeps_query(router: Router) -> None:
    plan = router.plan(attrs("/old/models?a=1&b=%20"), random.Random(1))
    assert plan.path == "/new/models?a=1&b=%20"
    assert plan.authority == "inference-v2"


def test_gateway_rewrites(router: Router) -> None:
    assert router.plan(attrs("/v1/chat", host="llm"), random.Random(1)).path == "/api/chat"
    assert router.plan(attrs("/v1", host="llm"), random.Random(1)).path == "/api"
    assert router.plan(attrs("/full", host="llm"), random.Random(1)).path == "/other"


def test_fault_and_mirror_fractions(router: Router) -> None:
    rng = random.Random(7)
    n = 3000
    plans = [router.plan(attrs("/faulty"), rng) for _ in range(n)]
    delays = sum(1 for p in plans if p.fault_delay_s == 2.0)
    aborts = sum(1 for p in plans if p.fault_abort_status == 503)
    mirrors = sum(1 for p in plans if p.mirrors)
    assert within_binomial_bound(delays, n, 0.5)
    assert within_binomial_bound(aborts, n, 0.2)
    assert within_binomial_bound(mirrors, n, 0.3)
    assert all(p.mirrors[0].host == "shadow" for p in plans if p.mirrors)


def test_consistent_hash_key_follows_the_chosen_subsets_policy(router: Router) -> None:
    # /faulty goes to v1, which inherits the cookie hash; the tester route goes to v2,
    # whose subset policy overrides it with ROUND_ROBIN (no key).
    assert router.plan(attrs("/faulty", cookie="a=1; session=xyz"), random.Random(0)).hash_key == (
        "xyz"
    )
    assert router.plan(attrs(x_tester="yes", cookie="session=xyz"), random.Random(0)).hash_key is (
        None
    )


def test_unrouted_host_gets_default_plan(router: Router) -> None:
    plan = router.plan(attrs("/a?q=1", host="elsewhere:9000"), random.Random(0))
    assert plan.route == ""
    assert plan.backend.host == "elsewhere"
    assert plan.path == "/a?q=1"
    assert plan.retries.attempts == 2


def test_routed_host_without_matching_route_raises_no_route(router: Router) -> None:
    with pytest.raises(NoRoute, match="no route of 'llm'"):
        router.plan(attrs("/nothing", host="llm"), random.Random(0))


def test_inference_pool_target_models_and_criticality(router: Router) -> None:
    rng = random.Random(99)
    n = 2000
    targets: Counter[str | None] = Counter()
    for _ in range(n):
        plan = router.plan(attrs("/v1/chat", host="llm", method="POST", model="chat"), rng)
        assert plan.inference is not None
        assert plan.inference.criticality is Criticality.CRITICAL
        targets[plan.inference.target_model] += 1
    assert within_binomial_bound(targets["chat-b"], n, 0.25)
    batch = router.plan(
        attrs("/v1/chat", host="llm", model="chat", x_gateway_inference_objective="batch"), rng
    )
    assert batch.inference is not None
    assert batch.inference.criticality is Criticality.SHEDDABLE
    unknown = router.plan(attrs("/v1/chat", host="llm", model="other"), rng)
    assert unknown.inference is not None
    assert unknown.inference.target_model == "other"
    assert unknown.inference.criticality is Criticality.STANDARD


def test_plan_is_reproducible_with_a_seed(router: Router) -> None:
    a = [router.plan(attrs("/x"), r).backend for r in [random.Random(5)] for _ in range(50)]
    b = [router.plan(attrs("/x"), r).backend for r in [random.Random(5)] for _ in range(50)]
    assert a == b


def test_istio_rewrite_of_a_non_prefix_match_replaces_the_whole_path() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [svc]
  http:
  - match: [{uri: {exact: /a/b}}]
    rewrite: {uri: /c}
    route: [{destination: {host: svc}}]
"""
    router = Router(build_routing(parse_yaml(text, "r.yaml")))
    assert router.plan(attrs("/a/b?z=1", host="svc"), random.Random(0)).path == "/c?z=1"
