"""What one load-generator run is asked to do, and what it measured (plain data).

Both cross a process boundary as JSON: the runner writes a ``LoadSpec`` onto the
generator's command line, and the generator prints a ``LoadResult`` as one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlet.bench.histogram import Histogram

NS = 1_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """One bounded run of the generator; every field is plain JSON."""

    port: int
    host: str = "127.0.0.1"
    path: str = "/"
    mode: str = "open"  # open | closed | handshake
    rate_per_s: float = 1000.0
    duration_s: float = 5.0
    connections: int = 16
    # A hard cap so no run is unbounded even at an absurd rate.
    max_requests: int = 2_000_000
    # Grace after the last intended send before outstanding requests count as errors.
    drain_s: float = 10.0
    stream: bool = False
    method: str = "GET"
    body_file: str | None = None
    host_header: str = "upstream"
    # open mode: seconds at the same rate before the measured window, not recorded
    warmup_s: float = 0.0
    # the first N requests of the run, timed apart as the cold-start figure
    cold_requests: int = 0
    # freeze the set-up heap and keep full collections out of the run (loadgc)
    gc_hygiene: bool = True
    # handshake mode
    handshakes: int = 100
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    expect_server_uri: str | None = None


@dataclass(slots=True, kw_only=True)
class LoadResult:
    """What a run measured; histograms in nanoseconds."""

    mode: str
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    token_gap: Histogram = field(default_factory=Histogram)
    # open loop: how late after its intended time each request left the generator
    send_lag: Histogram = field(default_factory=Histogram)
    # from the moment the request was actually written: the uncorrected figure,
    # which leaves out the generator's own stalls (and hides the system's queueing)
    service: Histogram = field(default_factory=Histogram)
    cpu_s: float = 0.0
    # the warm-up before the measured window: counted here and nowhere above
    warmup_sent: int = 0
    warmup_ok: int = 0
    warmup_errors: int = 0
    warmup_s: float = 0.0
    # the first ``cold_requests`` of the run (warm-up or not), from intended time
    cold: Histogram = field(default_factory=Histogram)
    first_response_ns: int | None = None
    gc: dict[str, Any] = field(default_factory=dict)

    def error(self, message: str, *, warm: bool = False) -> None:
        if warm:
            self.warmup_errors += 1
        else:
            self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(("warm-up: " if warm else "") + message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "elapsed_s": self.elapsed_s,
            "achieved_rate_per_s": self.ok / self.elapsed_s if self.elapsed_s else 0.0,
            "cpu_s": self.cpu_s,
            "latency": self.latency.to_dict(),
            "ttft": self.ttft.to_dict(),
            "token_gap": self.token_gap.to_dict(),
            "send_lag": self.send_lag.to_dict(),
            "service": self.service.to_dict(),
            "warmup": {
                "sent": self.warmup_sent,
                "ok": self.warmup_ok,
                "errors": self.warmup_errors,
                "elapsed_s": self.warmup_s,
            },
            "cold": self.cold.to_dict(),
            "first_response_ms": (
                None if self.first_response_ns is None else self.first_response_ns / 1e6
            ),
            "gc": self.gc,
        }


def build_request(spec: LoadSpec) -> bytes:
    body = Path(spec.body_file).read_bytes() if spec.body_file else b""
    head = f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {spec.host_header}\r\n"
    if body or spec.method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode("ascii") + b"\r\n" + body
