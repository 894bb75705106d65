"""Library-level figures: the cost of one policy decision, one audit record, one SVID.

Each calls the public API of the package it measures, in this process, timing
every operation with ``perf_counter_ns`` into a histogram (so p99 is a real
99th percentile, not a multiple of the mean). A package that is not part of
this build yields ``{"skipped": "<reason>"}`` instead of a crash.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any

from meshlet.bench.histogram import Histogram


def _timed(count: int, op: Callable[[int], object]) -> dict[str, Any]:
    hist = Histogram()
    start = perf_counter()
    for i in range(count):
        t0 = perf_counter_ns()
        op(i)
        hist.record(perf_counter_ns() - t0)
    wall = perf_counter() - start
    return {
        "count": count,
        "mean_us": hist.mean / 1000,
        "p50_us": hist.percentile(50) / 1000,
        "p99_us": hist.percentile(99) / 1000,
        "max_us": hist.max / 1000,
        "per_s": count / wall if wall else 0.0,
    }


def policy_figures(*, rules: int = 50, evaluations: int = 10_000) -> dict[str, Any]:
    """``rules`` rules over a DENY and an ALLOW policy; a request mix hitting each."""
    if importlib.util.find_spec("meshlet.policy.engine") is None:
        return {"skipped": "meshlet.policy.engine is not part of this build"}
    from meshlet.config.istio_security import (
        Action,
        AuthorizationPolicy,
        Operation,
        Rule,
        Source,
    )
    from meshlet.policy.attributes import RequestAttributes
    from meshlet.policy.engine import CompiledPolicies

    def rule(i: int) -> Rule:
        return Rule(
            sources=(Source(principals=(f"bench.local/ns/team{i % 7}/sa/client{i}",)),),
            operations=(
                Operation(
                    methods=("GET", "POST") if i % 2 else ("POST",), paths=(f"/v1/models/m{i}/*",)
                ),
            ),
        )

    deny_count = max(1, rules // 5)
    deny = AuthorizationPolicy(
        namespace="bench",
        name="deny",
        selector=None,
        action=Action.DENY,
        provider=None,
        rules=tuple(rule(1000 + i) for i in range(deny_count)),
    )
    allow = AuthorizationPolicy(
        namespace="bench",
        name="allow",
        selector=None,
        action=Action.ALLOW,
        provider=None,
        rules=tuple(rule(i) for i in range(rules - deny_count)),
    )
    engine = CompiledPolicies([deny, allow])
    requests = [
        RequestAttributes(
            method="POST",
            path=f"/v1/models/m{i % (rules + 5)}/infer",
            host="model.bench",
            source_principal=f"bench.local/ns/team{i % 7}/sa/client{i % (rules + 5)}",
            destination_port=8080,  # principals in Istio's form: no spiffe:// prefix
        )
        for i in range(64)
    ]
    allowed = sum(engine.evaluate(r).allowed for r in requests)
    out = _timed(evaluations, lambda i: engine.evaluate(requests[i % len(requests)]))
    out.update(rules=rules, allowed_share=allowed / len(requests))
    return out


def svid_figures(*, count: int = 1000) -> dict[str, Any]:
    """Issue ``count`` SVIDs (key generation + signing) from one CA."""
    if importlib.util.find_spec("meshlet.identity.ca") is None:
        return {"skipped": "meshlet.identity.ca is not part of this build"}
    from meshlet.clock import MonotonicClock
    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.spiffeid import SpiffeId

    now = MonotonicClock().wall()
    with tempfile.TemporaryDirectory(prefix="meshlet-bench-ca-") as tmp:
        ca = CertificateAuthority.init(Path(tmp), "bench.local", now=now)
        ids = [SpiffeId.parse(f"spiffe://bench.local/ns/bench/sa/w{i}") for i in range(count)]
        return _timed(count, lambda i: ca.issue(ids[i], now=now))


def audit_figures(*, events: int = 10_000) -> dict[str, Any]:
    """Hash-chained audit records: the request-path cost of ``record`` (mean/p99),
    and end-to-end events/s until ``flush`` says all are hashed and written."""
    if importlib.util.find_spec("meshlet.telemetry.audit") is None:
        return {"skipped": "meshlet.telemetry.audit is not part of this build"}
    from meshlet.clock import MonotonicClock
    from meshlet.telemetry.audit import AuditLog, verify

    event = {
        "event": "authz_denied",
        "source_principal": "bench.local/ns/bench/sa/client",
        "destination": "model.bench",
        "method": "POST",
        "path": "/v1/models/m1/infer",
        "policy": "bench/deny",
        "rule": 3,
    }
    with tempfile.TemporaryDirectory(prefix="meshlet-bench-audit-") as tmp:
        path = Path(tmp) / "audit.log"
        audit = AuditLog(path, clock=MonotonicClock())
        try:
            start = perf_counter()
            out = _timed(events, lambda _i: audit.record(event))
            if not audit.flush(timeout_s=60.0):
                return {"skipped": "audit log did not flush within 60 s"}
            wall = perf_counter() - start
        finally:
            audit.close()
        checked = verify(path)
    out["record_per_s"] = out.pop("per_s")
    out["per_s"] = events / wall if wall else 0.0  # recorded, hashed and written
    out["chain_ok"] = checked.ok and checked.lines == events
    return out


def all_figures(*, quick: bool) -> dict[str, dict[str, Any]]:
    scale = 10 if quick else 1
    figures: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("policy", lambda: policy_figures(evaluations=10_000 // scale)),
        ("audit", lambda: audit_figures(events=10_000 // scale)),
        ("svid", lambda: svid_figures(count=1000 // scale)),
    ]
    for name, fn in plan:
        try:
            figures[name] = fn()
        except Exception as exc:  # a sibling package's bug must not sink the whole run
            figures[name] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
    return figures
