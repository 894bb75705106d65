"""Golden metrics with Istio's standard names and labels, cheap on the hot path.

Every request through a sidecar calls :meth:`GoldenMetrics.request` once, so it
must cost a microsecond or two, not the 5-10 µs of prometheus_client's
``Counter.labels(...).inc()`` (a lock, a label dict, a child lookup per metric).
Instead each distinct label tuple owns one small mutable series record; a
request is one dict lookup, a few integer additions and three ``bisect`` calls.
The Prometheus text is built only when ``/stats/prometheus`` is scraped.

Names, labels and bucket bounds follow Istio's standard metrics
(https://istio.io/latest/docs/reference/config/metrics/) so existing Grafana
dashboards and Kiali queries work unchanged. Labels that need peer metadata
exchange (``*_app``, ``*_version``, ``*_cluster``) are not emitted; the workload
namespace is derived from the SPIFFE principal at scrape time, so it costs
nothing per request.

Not thread-safe by design: one instance per event loop (per worker process).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from meshlet.telemetry.exposition import escape, header, histogram_lines
from meshlet.telemetry.labels import UNKNOWN as _UNKNOWN
from meshlet.telemetry.labels import HttpKey as _HttpKey
from meshlet.telemetry.labels import TcpKey as _TcpKey
from meshlet.telemetry.labels import http_labels, tcp_labels

# Istio's default bucket bounds for istio_request_duration_milliseconds
# (proxy/extensions/stats: 0.5 ms up to one hour).
DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip
# Istio's bounds for istio_request_bytes / istio_response_bytes: 1 B to 1 GB, x10.
BYTES_BUCKETS: tuple[float, ...] = tuple(float(10**i) for i in range(10))

# A peer cannot mint principals (they come from certificates our CA signed) but a
# buggy config or a scan of response codes could still explode cardinality; past
# this many series new label sets fold into one "overflow" series per family.
DEFAULT_MAX_SERIES = 10_000


class _HttpSeries:
    """Counters and histogram buckets for one HTTP label set (non-cumulative)."""

    __slots__ = ("count", "dur_buckets", "dur_sum", "labels", "req_buckets", "req_sum",
                 "resp_buckets", "resp_sum")  # fmt: skip

    def __init__(self) -> None:
        self.labels = ""  # the rendered label text, built at the first scrape
        self.count = 0
        self.dur_sum = 0.0
        self.dur_buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.req_sum = 0
        self.req_buckets = [0] * (len(BYTES_BUCKETS) + 1)
        self.resp_sum = 0
        self.resp_buckets = [0] * (len(BYTES_BUCKETS) + 1)


class _TcpSeries:
    """Connection and byte counters for one TCP label set."""

    __slots__ = ("closed", "labels", "opened", "received", "sent")

    def __init__(self) -> None:
        self.labels = ""  # the rendered label text, built at the first scrape
        self.opened = 0
        self.closed = 0
        self.sent = 0
        self.received = 0


_HTTP_OVERFLOW: _HttpKey = ("overflow", "overflow", "overflow", "overflow", "overflow", 0,
                            "overflow", False)  # fmt: skip
_TCP_OVERFLOW: _TcpKey = ("overflow", "overflow", "overflow", "overflow", False)


class GoldenMetrics:
    """The sidecar's request, TCP and error counters, rendered as Prometheus text.

    ``workload`` and ``namespace`` name the local workload; they fill
    ``destination_workload`` on inbound (``reporter="destination"``) series and
    ``source_workload`` on outbound (``reporter="source"``) ones.
    """

    __slots__ = ("_handshake_failures", "_http", "_max_series", "_namespace", "_outstanding",
                 "_overflowed", "_tcp", "_upstream_errors", "_workload")  # fmt: skip

    def __init__(
        self,
        *,
        workload: str = _UNKNOWN,
        namespace: str = _UNKNOWN,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        self._workload = workload
        self._namespace = namespace
        self._max_series = max_series
        self._http: dict[_HttpKey, _HttpSeries] = {}
        self._tcp: dict[_TcpKey, _TcpSeries] = {}
        self._handshake_failures: dict[str, int] = {}
        self._upstream_errors: dict[str, int] = {}
        self._overflowed = 0
        self._outstanding: Callable[[], Iterable[tuple[str, str, int]]] | None = None

    def fill_workload(self, *, workload: str, namespace: str) -> None:
        """Name the local workload where the constructor left it unknown: a
        sidecar whose bootstrap omits ``workload`` learns its name and namespace
        from its SVID, which is loaded only when the server starts."""
        if self._workload == _UNKNOWN and workload:
            self._workload = workload
        if self._namespace == _UNKNOWN and namespace:
            self._namespace = namespace

    # -- hot path -----------------------------------------------------------

    def request(
        self,
        *,
        reporter: str,
        source_principal: str,
        destination_principal: str,
        destination_service: str,
        request_protocol: str,
        response_code: int,
        mtls: bool,
        duration_s: float,
        request_bytes: int,
        response_bytes: int,
        response_flags: str = "-",
    ) -> None:
        """Record one finished HTTP request (``reporter`` is "source" or "destination")."""
        key = (reporter, source_principal, destination_principal, destination_service,
               request_protocol, response_code, response_flags, mtls)  # fmt: skip
        series = self._http.get(key)
        if series is None:
            series = self._new_http(key)
        series.count += 1
        ms = duration_s * 1000.0
        series.dur_sum += ms
        series.dur_buckets[bisect_left(DURATION_BUCKETS_MS, ms)] += 1
        series.req_sum += request_bytes
        series.req_buckets[bisect_left(BYTES_BUCKETS, request_bytes)] += 1
        series.resp_sum += response_bytes
        series.resp_buckets[bisect_left(BYTES_BUCKETS, response_bytes)] += 1

    def tcp_opened(
        self,
        *,
        reporter: str,
        source_principal: str,
        destination_principal: str,
        destination_service: str,
        mtls: bool,
    ) -> None:
        """Count one opaque TCP connection accepted (inbound) or opened (outbound)."""
        series = self._tcp_series(
            reporter, source_principal, destination_principal, destination_service, mtls
        )
        series.opened += 1

    def tcp_closed(
        self,
        *,
        reporter: str,
        source_principal: str,
        destination_principal: str,
        destination_service: str,
        mtls: bool,
    ) -> None:
        """Count one opaque TCP connection closed."""
        series = self._tcp_series(
            reporter, source_principal, destination_principal, destination_service, mtls
        )
        series.closed += 1

    def tcp_bytes(
        self,
        sent: int,
        received: int,
        *,
        reporter: str,
        source_principal: str,
        destination_principal: str,
        destination_service: str,
        mtls: bool,
    ) -> None:
        """Add spliced bytes, in Istio's sense: ``received`` flowed in the request
        direction (client to server), ``sent`` in the response direction."""
        series = self._tcp_series(
            reporter, source_principal, destination_principal, destination_service, mtls
        )
        series.sent += sent
        series.received += received

    def tls_handshake_failure(self, reason: str) -> None:
        """Count a failed TLS handshake; ``reason`` is a short fixed word
        (``no_client_cert``, ``bad_certificate``, ``wrong_identity``, ...)."""
        self._handshake_failures[reason] = self._handshake_failures.get(reason, 0) + 1

    def upstream_error(self, kind: str) -> None:
        """Count an upstream failure by kind (``connect``, ``timeout``, ``reset``, ...)."""
        self._upstream_errors[kind] = self._upstream_errors.get(kind, 0) + 1

    def set_outstanding_source(
        self, source: Callable[[], Iterable[tuple[str, str, int]]] | None
    ) -> None:
        """Read ``meshlet_endpoint_outstanding_requests`` from ``source`` at scrape
        time: (cluster, endpoint address, in-flight requests) triples. The balancer
        keeps these counts anyway, so the request path pays nothing for them."""
        self._outstanding = source

    # -- queries (tests, admin, status) -------------------------------------

    def request_count(
        self,
        *,
        reporter: str | None = None,
        response_code: int | None = None,
        source_principal: str | None = None,
        destination_principal: str | None = None,
    ) -> int:
        """Requests recorded so far whose labels match every filter given."""
        total = 0
        for key, series in self._http.items():
            if (
                (reporter is None or key[0] == reporter)
                and (source_principal is None or key[1] == source_principal)
                and (destination_principal is None or key[2] == destination_principal)
                and (response_code is None or key[5] == response_code)
            ):
                total += series.count
        return total

    def tcp_totals(self) -> dict[str, int]:
        """Sums over all TCP series: opened, closed, sent, received."""
        totals = {"opened": 0, "closed": 0, "sent": 0, "received": 0}
        for series in self._tcp.values():
            totals["opened"] += series.opened
            totals["closed"] += series.closed
            totals["sent"] += series.sent
            totals["received"] += series.received
        return totals

    def handshake_failures(self) -> dict[str, int]:
        return dict(self._handshake_failures)

    def upstream_errors(self) -> dict[str, int]:
        return dict(self._upstream_errors)

    # -- scrape -------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition format (version 0.0.4)."""
        return "".join(self._lines()).encode()

    def _lines(self) -> Iterator[str]:
        http = sorted(self._http.items(), key=lambda kv: _sort_key(kv[0]))
        tcp = sorted(self._tcp.items(), key=lambda kv: _sort_key(kv[0]))
        for key, series in http:
            if not series.labels:
                series.labels = http_labels(key, self._workload, self._namespace)
        for tkey, tseries in tcp:
            if not tseries.labels:
                tseries.labels = tcp_labels(tkey, self._workload, self._namespace)
        http_rows = [(s.labels, s) for _, s in http]
        tcp_rows = [(t.labels, t) for _, t in tcp]

        yield from header("istio_requests_total", "counter", "Requests handled.")
        for labels, s in http_rows:
            yield f"istio_requests_total{{{labels}}} {s.count}\n"
        for name, field, bounds, help_text in _HISTOGRAMS:
            yield from header(name, "histogram", help_text)
            for labels, s in http_rows:
                yield from histogram_lines(
                    name,
                    labels,
                    bounds,
                    getattr(s, f"{field}_buckets"),
                    s.count,
                    getattr(s, f"{field}_sum"),
                )

        for name, attr, help_text in _TCP_COUNTERS:
            yield from header(name, "counter", help_text)
            for labels, t in tcp_rows:
                yield f"{name}{{{labels}}} {getattr(t, attr)}\n"

        yield from header("meshlet_tls_handshake_failures_total", "counter",
                           "TLS handshakes that failed, by reason.")  # fmt: skip
        for reason, n in sorted(self._handshake_failures.items()):
            yield f'meshlet_tls_handshake_failures_total{{reason="{escape(reason)}"}} {n}\n'
        yield from header("meshlet_upstream_errors_total", "counter",
                           "Upstream failures, by kind.")  # fmt: skip
        for kind, n in sorted(self._upstream_errors.items()):
            yield f'meshlet_upstream_errors_total{{kind="{escape(kind)}"}} {n}\n'
        if self._outstanding is not None:
            yield from header("meshlet_endpoint_outstanding_requests", "gauge",
                               "Requests in flight to each upstream endpoint.")  # fmt: skip
            for cluster, endpoint, n in sorted(self._outstanding()):
                yield (f'meshlet_endpoint_outstanding_requests{{cluster="{escape(cluster)}",'
                       f'endpoint="{escape(endpoint)}"}} {n}\n')  # fmt: skip
        yield from header("meshlet_metrics_overflow_total", "counter",
                           "Samples folded into the overflow series.")  # fmt: skip
        yield f"meshlet_metrics_overflow_total {self._overflowed}\n"

    def _new_http(self, key: _HttpKey) -> _HttpSeries:
        if len(self._http) >= self._max_series:
            self._overflowed += 1
            key = _HTTP_OVERFLOW
            existing = self._http.get(key)
            if existing is not None:
                return existing
        series = self._http[key] = _HttpSeries()
        return series

    def _tcp_series(
        self,
        reporter: str,
        source_principal: str,
        destination_principal: str,
        destination_service: str,
        mtls: bool,
    ) -> _TcpSeries:
        """The series of one TCP label set, created on first use."""
        key = (reporter, source_principal, destination_principal, destination_service, mtls)
        return self._tcp.get(key) or self._new_tcp(key)

    def _new_tcp(self, key: _TcpKey) -> _TcpSeries:
        if len(self._tcp) >= self._max_series:
            self._overflowed += 1
            key = _TCP_OVERFLOW
            existing = self._tcp.get(key)
            if existing is not None:
                return existing
        series = self._tcp[key] = _TcpSeries()
        return series


_HISTOGRAMS: tuple[tuple[str, str, tuple[float, ...], str], ...] = (
    ("istio_request_duration_milliseconds", "dur", DURATION_BUCKETS_MS,
     "Time from the first request byte to the last response byte."),
    ("istio_request_bytes", "req", BYTES_BUCKETS, "Request body sizes."),
    ("istio_response_bytes", "resp", BYTES_BUCKETS, "Response body sizes."),
)  # fmt: skip

_TCP_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("istio_tcp_connections_opened_total", "opened", "Opaque TCP connections opened."),
    ("istio_tcp_connections_closed_total", "closed", "Opaque TCP connections closed."),
    ("istio_tcp_sent_bytes_total", "sent", "Bytes sent in the response direction."),
    ("istio_tcp_received_bytes_total", "received", "Bytes received in the request direction."),
)


def _sort_key(key: tuple[str | int | bool, ...]) -> tuple[str, ...]:
    return tuple(str(part) for part in key)
