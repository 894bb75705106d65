"""What ``meshlet route explain`` reports, as plain JSON-ready data.

Kept in the engine (not the CLI) so ``meshlet analyze`` and tests can ask the
same question; it runs the proxy's own ``Router`` so the answer cannot drift
from what the proxy does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshlet.errors import NoRoute
from meshlet.traffic.loader import RoutingConfig
from meshlet.traffic.match import RequestAttributes
from meshlet.traffic.model_name import ModelFieldScanner, ScanState, model_from_path
from meshlet.traffic.router import ForwardPlan, Router


class _Fixed:
    """A random source that always says 0: explain shows fractions, not one draw."""

    def random(self) -> float:
        return 0.0


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def explain(
    config: RoutingConfig,
    *,
    host: str,
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    source_ip: str = "",
) -> dict[str, Any]:
    model = model_from_path(target.partition("?")[0])
    if model is None and body is not None:
        found = ModelFieldScanner().feed(body, end=True)
        model = found.model if found.state is ScanState.FOUND else None
    attrs = RequestAttributes.build(
        host=host,
        method=method,
        target=target,
        headers=headers,
        source_ip=source_ip,
        model_name=model,
    )
    router = Router(config)
    base: dict[str, Any] = {
        "host": attrs.host,
        "method": attrs.method,
        "path": target,
        "model": model,
    }
    try:
        plan = router.plan(attrs, _Fixed())
    except NoRoute as exc:
        return {**base, "matched": False, "reason": str(exc), "route": None, "backends": []}
    return {**base, "matched": True, **_plan_report(router, attrs, plan)}


def _plan_report(router: Router, attrs: RequestAttributes, plan: ForwardPlan) -> dict[str, Any]:
    table = router.table(attrs.host)
    hit = table.best(attrs) if table is not None else None
    route = hit.route if hit is not None else None
    fault = route.fault if route is not None else None
    lb = plan.policy.load_balancer
    return {
        "route": plan.route or None,
        "source": plan.route_source,
        "backends": [
            {
                "host": d.host,
                "subset": d.subset,
                "port": d.port,
                "weight": d.weight,
                "kind": d.kind.value,
            }
            for d in plan.backends
        ],
        "timeout_ms": _ms(plan.timeout_s),
        "stream_idle_timeout_ms": _ms(plan.stream_idle_timeout_s),
        "retries": {
            "attempts": plan.retries.attempts,
            "per_try_timeout_ms": _ms(plan.retries.per_try_timeout_s),
            "retry_on": sorted(plan.retries.retry_on),
        },
        "rewritten_path": plan.path,
        "authority": plan.authority,
        "mirrors": [
            {
                "host": m.destination.host,
                "subset": m.destination.subset,
                "percent": m.fraction * 100,
            }
            for m in (route.mirrors if route is not None else ())
        ],
        "fault": None
        if fault is None
        else {
            "delay_ms": _ms(fault.delay_s),
            "delay_percent": fault.delay_fraction * 100,
            "abort_status": fault.abort_status,
            "abort_percent": fault.abort_fraction * 100,
        },
        "max_request_body_bytes": plan.max_request_body_bytes,
        "load_balancer": lb.algorithm.value,
        "inference": None
        if plan.inference is None
        else {
            "pool": plan.inference.pool,
            "criticality": plan.inference.criticality.value,
            "target_models": _targets(router, plan),
        },
    }


def _targets(router: Router, plan: ForwardPlan) -> list[dict[str, Any]]:
    inf = plan.inference
    model = router.config.models.get(inf.requested_model or "") if inf is not None else None
    if model is None:
        return []
    return [{"name": t.name, "weight": t.weight} for t in model.target_models]
