"""Loaders: Istio VirtualService/DestinationRule, HTTPRoute, Inference Extension."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlet.config.inference import Criticality
from meshlet.config.routing import BackendKind, LbAlgorithm, MatchKind, Precedence
from meshlet.config.source import parse_yaml
from meshlet.errors import ConfigError
from meshlet.traffic.loader import RoutingConfig, build_routing, load_routing

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inf, namespace: ml, annotations: {meshlet.io/max-request-body-bytes: "1048576",
  meshlet.io/stream-idle-timeout: 5s}}
spec:
  hosts: [inference]
  http:
  - name: canary-testers
    match:
    - headers: {x-canary: {exact: "1"}}
      uri: {prefix: /v2/}
    route:
    - destination: {host: inference, subset: v2, port: {number: 8080}}
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,409"}
    timeout: 1.5s
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 1}}
    mirror: {host: shadow}
    mirrorPercentage: {value: 25}
    headers: {request: {set: {X-A: b}, add: {x-c: d}, remove: [x-e]}}
    rewrite: {uri: /v3/, authority: other}
  - route:
    - destination: {host: inference, subset: v1}
      weight: 90
    - destination: {host: inference, subset: v2}
      weight: 10
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: inf, namespace: ml}
spec:
  host: inference
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 5, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3s,
      maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: X-User, maglev: {}}}}
"""

HTTPROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: llm, namespace: ml, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: llm}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /v1/}
      headers: [{name: X-Model-Name, value: llama}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: b}]}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}, percent: 5}
    backendRefs: [{name: llm-pool, group: inference.networking.k8s.io, kind: InferencePool}]
    timeouts: {request: 30s, backendRequest: 10s}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: llm-pool, annotations: {meshlet.io/max-concurrency-per-endpoint: "4"}}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: llama}
spec:
  modelName: llama
  criticality: Sheddable
  poolRef: {name: llm-pool}
  targetModels: [{name: llama-lora-a, weight: 90}, {name: llama-lora-b, weight: 10}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: llm-pool}}
"""


def _load(text: str, file: str = "r.yaml") -> RoutingConfig:
    return build_routing(parse_yaml(text, file))


def test_virtual_service_fields_are_converted() -> None:
    cfg = _load(VS)
    routes = cfg.hosts["inference"].routes
    assert [r.name for r in routes] == ["canary-testers", "ml/inf.http[1]"]
    r = routes[0]
    assert r.precedence is Precedence.ORDERED
    assert r.source == "r.yaml:8"
    (m,) = r.matches
    assert m.uri is not None
    assert m.uri.kind is MatchKind.PREFIX
    assert m.uri.value == "/v2/"
    assert m.headers[0].name == "x-canary"
    assert r.destinations[0].port == 8080
    assert r.destinations[0].weight == 100
    assert r.retries.attempts == 3
    assert r.retries.per_try_timeout_s == 2.0
    assert r.retries.retry_on == {"5xx", "reset", "409"}
    assert r.timeout_s == 1.5
    assert r.fault is not None
    assert r.fault.delay_s == pytest.approx(0.1)
    assert r.fault.delay_fraction == pytest.approx(0.1)
    assert r.fault.abort_status == 503
    assert r.mirrors[0].destination.host == "shadow"
    assert r.mirrors[0].fraction == 0.25
    assert r.request_headers.set == (("x-a", "b"),)
    assert r.request_headers.remove == ("x-e",)
    assert r.rewrite is not None
    assert r.rewrite.authority == "other"
    assert r.max_request_body_bytes == 1048576
    assert r.stream_idle_timeout_s == 5.0
    assert [d.weight for d in routes[1].destinations] == [90, 10]


def test_destination_rule_policies_and_subset_override() -> None:
    dr = _load(VS).destinations["inference"]
    pool = dr.policy.connection_pool
    assert (pool.max_connections, pool.max_pending_requests) == (10, 1)
    assert pool.connect_timeout_s == 0.25
    assert pool.idle_timeout_s == 30.0
    assert pool.max_requests_per_connection == 5
    od = dr.policy.outlier_detection
    assert od is not None
    assert od.consecutive_5xx == 2
    assert od.max_ejection_percent == 50
    v2 = dr.for_subset("v2")
    assert v2.load_balancer.algorithm is LbAlgorithm.MAGLEV
    assert v2.load_balancer.hash_header == "x-user"
    assert v2.connection_pool == pool  # inherited field by field
    assert dr.for_subset("v1").load_balancer.algorithm is LbAlgorithm.P2C_EWMA


def test_http_route_and_inference_resources() -> None:
    cfg = _load(HTTPROUTE)
    (r,) = cfg.hosts["llm"].routes
    assert r.precedence is Precedence.SPECIFICITY
    assert r.order == ("2024-01-01T00:00:00Z", "ml/llm", 0)
    assert r.matches[0].uri is not None
    assert r.matches[0].uri.kind is MatchKind.PATH_PREFIX
    assert r.matches[0].uri.value == "/v1"
    assert r.destinations[0].kind is BackendKind.INFERENCE_POOL
    assert r.timeout_s == 30.0
    assert r.retries.per_try_timeout_s == 10.0
    assert r.retries.attempts == 0
    assert r.rewrite is not None
    assert r.rewrite.uri_prefix == "/"
    assert r.mirrors[0].fraction == 0.05
    pool = cfg.pools["llm-pool"]
    assert pool.selector == (("app", "vllm"),)
    assert pool.target_ports == (8000,)
    assert pool.max_concurrency_per_endpoint == 4
    model = cfg.models["llama"]
    assert model.criticality is Criticality.SHEDDABLE
    assert [t.weight for t in model.target_models] == [90, 10]
    assert cfg.objectives["batch"].criticality is Criticality.SHEDDABLE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            VS.replace("    timeout: 1.5s\n", "    timeout: 1.5s\n    corsPolicy: {}\n"),
            "r.yaml:16: spec.http[0].corsPolicy: unknown field",
            id="vs-unknown-field",
        ),
        pytest.param(
            VS.replace('retryOn: "5xx,reset,409"', 'retryOn: "5xx,bogus"'),
            "r.yaml:14: spec.http[0].retries.retryOn: Value error, retryOn 'bogus'",
            id="retry-on-token",
        ),
        pytest.param(
            VS.replace("timeout: 1.5s", "timeout: 10"),
            "spec.http[0].timeout",
            id="duration-without-unit",
        ),
        pytest.param(
            VS.replace("gateways", "x").replace(
                "  hosts: [inference]", "  hosts: [inference]\n  tcp: []"
            ),
            "spec.tcp: unknown field",
            id="tcp-routes",
        ),
        pytest.param(
            VS.replace("maxEjectionPercent: 50", "maxEjectionPercent: 500"),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            id="percent",
        ),
        pytest.param(
            VS.replace("{host: inference, subset: v1}", "{host: inference, subset: v9}"),
            "subset 'v9' of host 'inference' is not defined",
            id="unknown-subset",
        ),
        pytest.param(
            HTTPROUTE.replace("kind: Service, name: llm", "kind: Gateway, name: gw"),
            "spec.parentRefs[0]: parentRef kind 'Gateway' is not supported",
            id="gateway-parent",
        ),
        pytest.param(
            HTTPROUTE.replace("type: URLRewrite", "type: RequestRedirect"),
            "spec.rules[0].filters[1].type",
            id="redirect-filter",
        ),
        pytest.param(
            HTTPROUTE.replace("name: llm-pool, group", "name: nopool, group"),
            "backendRef InferencePool 'nopool' is not defined",
            id="missing-pool",
        ),
        pytest.param(
            HTTPROUTE.replace(
                "poolRef: {name: llm-pool}\n  targetModels",
                "poolRef: {name: other}\n  targetModels",
            ),
            "poolRef 'other' names no InferencePool",
            id="model-pool-ref",
        ),
        pytest.param(
            HTTPROUTE.replace("criticality: Sheddable", "criticality: Urgent"),
            "spec.criticality",
            id="criticality",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
            "r.yaml:2: kind: kind 'Service' is not a routing resource",
            id="other-kind",
        ),
    ],
)
def test_unsupported_or_wrong_config_is_refused_with_location(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(text)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_all_problems_reported_at_once() -> None:
    bad = VS.replace("timeout: 1.5s", "timeout: nope").replace(
        "maxEjectionPercent: 50", "maxEjectionPercent: 500"
    )
    with pytest.raises(ConfigError) as info:
        _load(bad)
    assert len(info.value.problems) == 2


def test_mixing_virtual_service_and_http_route_for_one_host_is_refused() -> None:
    hr = (
        HTTPROUTE.split("---")[0]
        .replace("name: llm}", "name: inference}")
        .replace(
            "name: llm-pool, group: inference.networking.k8s.io, kind: InferencePool", "name: x"
        )
    )
    with pytest.raises(ConfigError, match="VirtualServices or HTTPRoutes, not both"):
        _load(VS + "---\n" + hr)


def test_load_routing_reads_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VS)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text(HTTPROUTE)
    cfg = load_routing([tmp_path])
    assert set(cfg.hosts) == {"inference", "llm"}
    with pytest.raises(ConfigError, match="no such file"):
        load_routing([tmp_path / "missing.yaml"])


def test_inference_pool_alpha_shape() -> None:
    cfg = _load("""\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: p}
spec: {selector: {app: m}, targetPortNumber: 8000, extensionRef: {name: epp}}
""")
    assert cfg.pools["p"].target_ports == (8000,)
    assert cfg.pools["p"].max_concurrency_per_endpoint is None


@pytest.mark.parametrize(
    ("annotation", "value", "expected"),
    [
        ("meshlet.io/max-request-body-bytes", "1MiB", "not a byte count: '1MiB'"),
        ("meshlet.io/stream-idle-timeout", "30", "missing a unit"),
    ],
)
def test_bad_meshlet_annotations_are_refused(annotation: str, value: str, expected: str) -> None:
    text = VS.replace(
        'meshlet.io/max-request-body-bytes: "1048576",\n  meshlet.io/stream-idle-timeout: 5s',
        f'{annotation}: "{value}"',
    )
    with pytest.raises(ConfigError) as info:
        _load(text)
    assert any(
        f"metadata.annotations.{annotation}: {expected}" in p or expected in p
        for p in info.value.problems
    ), info.value.problems
