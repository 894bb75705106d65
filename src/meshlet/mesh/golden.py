"""Golden metrics from sidecar scrapes: request rate, success rate, p50/p99, mTLS share.

Pure functions over the Prometheus text each sidecar serves on
``/stats/prometheus`` (Istio's metric names). Two scrapes of the same sidecars
``window_s`` apart give the figures for that window, as ``linkerd viz stat``
does: counters and histogram buckets are subtracted, so a restart's reset
counters and old traffic never leak into the window.

A service workload is judged by what its sidecars served (``reporter=
"destination"``, inbound); a client-only workload by what it sent
(``reporter="source"``, outbound). Success is any response that is not a 5xx
(Linkerd's definition; a 4xx is the caller's problem, a 403 a policy's answer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"


@dataclass(slots=True, kw_only=True)
class Counts:
    """What one scrape (or the difference of two) says about one workload."""

    requests: float = 0.0
    failures: float = 0.0  # 5xx (or no response at all)
    denied: float = 0.0  # 401/403: authentication or authorization said no
    mtls: float = 0.0
    # upper bound (ms) -> cumulative count, Prometheus-style, +inf included
    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, earlier: Counts) -> Counts:
        """The window between ``earlier`` and self; a counter that went down was
        reset by a restart, and then the later value is the whole window."""

        def sub(now: float, then: float) -> float:
            return now - then if now >= then else now

        reset = self.requests < earlier.requests
        return Counts(
            requests=sub(self.requests, earlier.requests),
            failures=self.failures if reset else sub(self.failures, earlier.failures),
            denied=self.denied if reset else sub(self.denied, earlier.denied),
            mtls=self.mtls if reset else sub(self.mtls, earlier.mtls),
            buckets={
                le: (n if reset else sub(n, earlier.buckets.get(le, 0.0)))
                for le, n in self.buckets.items()
            },
        )

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.denied += other.denied
        self.mtls += other.mtls
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n


@dataclass(frozen=True, slots=True, kw_only=True)
class Golden:
    """One row of ``meshlet status``; None where the window had no requests."""

    requests: float
    rate_per_s: float
    success_rate: float | None
    denied_share: float | None  # counted as success (the caller's problem), shown apart
    p50_ms: float | None
    p99_ms: float | None
    mtls_share: float | None


def parse_samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` for each sample line of the text exposition format."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, _, body, value = match.groups()
        labels = {
            k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(body or "")
        }
        try:
            yield name, labels, float(value)
        except ValueError:
            continue


def counts_from(text: str, reporter: str) -> Counts:
    """Sum every series of ``reporter`` ("source" or "destination") in one scrape."""
    out = Counts()
    for name, labels, value in parse_samples(text):
        if labels.get("reporter") != reporter:
            continue
        if name == REQUESTS:
            out.requests += value
            code = labels.get("response_code", "0")
            if not code.isdigit() or int(code) >= 500 or int(code) == 0:
                out.failures += value
            elif code in ("401", "403"):
                out.denied += value
            if labels.get("connection_security_policy") == "mutual_tls":
                out.mtls += value
        elif name == DURATION + "_bucket":
            le = labels.get("le", "+Inf")
            bound = math.inf if le == "+Inf" else float(le)
            out.buckets[bound] = out.buckets.get(bound, 0.0) + value
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus ``histogram_quantile``: linear interpolation inside the bucket
    holding rank ``q * total``; a rank in the +Inf bucket answers the highest
    finite bound (the true value is only known to be above it)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def golden(window: Counts, window_s: float) -> Golden:
    n = window.requests
    return Golden(
        requests=n,
        rate_per_s=n / window_s if window_s > 0 else 0.0,
        success_rate=(n - window.failures) / n if n else None,
        denied_share=window.denied / n if n else None,
        p50_ms=quantile(0.50, window.buckets) if n else None,
        p99_ms=quantile(0.99, window.buckets) if n else None,
        mtls_share=window.mtls / n if n else None,
    )
