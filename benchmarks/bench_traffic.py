"""Traffic engine benchmarks: route matching + endpoint choice, and balancer tail latency.

    .venv/bin/python benchmarks/bench_traffic.py [--requests N] [--quick]

1. Route matching + endpoint choice for a table of 200 routes (goal: < 10 us per
   request): ``Router.plan`` on a realistic mix of requests, plus ``P2CEwma.pick``
   and ``on_result``, timed together per request over a fixed request list. CPU
   time of this process (``time.process_time``), so other tenants of a shared
   machine inflate the figure less than wall time would.
2. A simulated two-replica pool, one replica 10x slower (10 ms vs 100 ms, 4 slots
   each, Poisson arrivals at 150 req/s): P50/P99/P99.9 latency and the slow
   replica's share of requests, P2C-EWMA vs round robin vs least request. The
   simulation is the pure model in ``meshlet.traffic.simulate`` (fake time), so
   it measures the policy, not this machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from meshlet.config.source import parse_yaml
from meshlet.traffic.balancer import Endpoint, LeastRequest, P2CEwma, RoundRobin
from meshlet.traffic.loader import build_routing
from meshlet.traffic.match import RequestAttributes
from meshlet.traffic.router import Router
from meshlet.traffic.simulate import Replica, simulate


def routes_yaml(n_routes: int) -> str:
    """200 routes of one VirtualService host in the shapes inference users write:
    per-model KServe prefixes, header (model-name) matches, exact health paths,
    a few regexes, and a 90/10 catch-all."""
    http = []
    for i in range(n_routes - 1):
        kind = i % 4
        if kind == 0:
            match = f"[{{uri: {{prefix: /v2/models/model-{i}/}}}}]"
        elif kind == 1:
            match = f"[{{uri: {{prefix: /v1/}}, headers: {{x-model-name: {{exact: llm-{i}}}}}}}]"
        elif kind == 2:
            match = f"[{{uri: {{exact: /svc-{i}/healthz}}}}]"
        else:
            match = f"[{{uri: {{regex: '/r{i}/[a-z]+/.*'}}}}]"
        http.append(f"  - match: {match}\n    route: [{{destination: {{host: m{i}}}}}]")
    http.append(
        "  - route:\n    - {destination: {host: default, subset: v1}, weight: 90}\n"
        "    - {destination: {host: default, subset: v2}, weight: 10}"
    )
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: big}\n"
        "spec:\n  hosts: [inference]\n  http:\n" + "\n".join(http) + "\n---\n"
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n"
        "spec:\n  host: default\n  subsets: [{name: v1, labels: {v: '1'}}, "
        "{name: v2, labels: {v: '2'}}]\n"
    )


def request_mix(n: int, n_routes: int, rng: random.Random) -> list[RequestAttributes]:
    out = []
    for _ in range(n):
        i = rng.randrange(n_routes - 1)
        kind = i % 4
        if kind == 0:
            target, headers, model = f"/v2/models/model-{i}/infer", {}, f"model-{i}"
        elif kind == 1:
            target, headers, model = "/v1/chat/completions", {}, f"llm-{i}"
        elif kind == 2:
            target, headers, model = f"/svc-{i}/healthz", {}, None
        else:
            target, headers, model = f"/r{i}/abc/x", {}, None
        if rng.random() < 0.1:
            target, model = "/unmatched/path", None  # falls to the catch-all
        out.append(
            RequestAttributes.build(
                host="inference", method="POST", target=target, headers=headers, model_name=model
            )
        )
    return out


def bench_routing(n_routes: int, requests: int) -> None:
    router = Router(build_routing(parse_yaml(routes_yaml(n_routes), "bench.yaml")))
    rng = random.Random(1)
    reqs = request_mix(requests, n_routes, rng)
    endpoints = [Endpoint(address=f"10.0.0.{i}:8000") for i in range(8)]
    picker = P2CEwma(endpoints)
    per_run = []
    for _ in range(5):
        start = time.process_time()
        now = 0.0
        for attrs in reqs:
            router.plan(attrs, rng)
            ep = picker.pick(now, rng)
            assert ep is not None
            now += 0.001
            picker.on_result(ep, 0.01, 200, now)
        per_run.append((time.process_time() - start) / len(reqs) * 1e6)
    plan_only = []
    for _ in range(5):
        start = time.process_time()
        for attrs in reqs:
            router.plan(attrs, rng)
        plan_only.append((time.process_time() - start) / len(reqs) * 1e6)
    print(f"route table: {n_routes} routes, {len(reqs)} requests x 5 runs")
    print(
        f"  plan + P2C pick + on_result (CPU time): "
        f"median {statistics.median(per_run):.2f} us/request (min {min(per_run):.2f}, goal < 10)"
    )
    print(
        f"  plan only (CPU time):                   "
        f"median {statistics.median(plan_only):.2f} us/request"
    )


def bench_tail(requests: int) -> None:
    fast, slow = Endpoint(address="fast"), Endpoint(address="slow")
    replicas = [
        Replica(endpoint=fast, service_s=0.010, concurrency=4),
        Replica(endpoint=slow, service_s=0.100, concurrency=4),
    ]
    print(
        f"two replicas (10 ms and 100 ms, 4 slots each), Poisson 150 req/s, "
        f"{requests} requests (simulated time)"
    )
    print(f"  {'balancer':<14}{'p50 ms':>10}{'p99 ms':>12}{'p99.9 ms':>12}{'slow share':>12}")
    for name, cls in (
        ("P2C-EWMA", P2CEwma),
        ("least-request", LeastRequest),
        ("round-robin", RoundRobin),
    ):
        r = simulate(
            cls([fast, slow]), replicas, arrivals_per_s=150, requests=requests, rng=random.Random(7)
        )
        print(
            f"  {name:<14}{r.percentile(50) * 1e3:>10.1f}{r.percentile(99) * 1e3:>12.1f}"
            f"{r.percentile(99.9) * 1e3:>12.1f}{r.share('slow'):>11.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--routes", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="2,000 requests")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.requests
    bench_routing(args.routes, n)
    bench_tail(n)


if __name__ == "__main__":
    main()
