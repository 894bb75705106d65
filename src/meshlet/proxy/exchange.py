"""One request/response pair in flight, and the per-listener state drivers share.

An ``Exchange`` is created when a request head has been parsed and lives until
its response is complete; the downstream driver owns it, a router decides where
it goes, an upstream connection carries it. It is a plain slots object because
one is made per request on the hot path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from meshlet.config.bootstrap import Limits, Timeouts
from meshlet.http1.events import Headers
from meshlet.proxy.hooks import GateVerdict, RequestInfo

if TYPE_CHECKING:
    from meshlet.proxy.driver_down import DownstreamConnection
    from meshlet.proxy.driver_up import UpstreamConnection
    from meshlet.proxy.pool import EndpointPool
    from meshlet.proxy.routing import Flight
    from meshlet.telemetry.accesslog import AccessLog
    from meshlet.telemetry.metrics import GoldenMetrics

__all__ = ["Exchange", "Listener", "RequestIds", "Router"]

NO_BODY, LENGTH, CHUNKED = 0, 1, 2


class RequestIds:
    """``x-request-id`` values: a per-process random prefix and a counter.

    Unique across processes and restarts with overwhelming probability, and a
    counter increment per request instead of a uuid4 (10-15 µs measured).
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode("ascii") + b"-"
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        return self._prefix + b"%x" % next(self._counter)


class Router(Protocol):
    """Decides where an exchange goes; implemented by inbound and outbound."""

    def start(self, ex: Exchange) -> None:
        """Begin forwarding ``ex``: attach an upstream or answer it via rescue."""
        ...

    def finish(self, ex: Exchange) -> None:
        """Record the finished exchange (metrics, gate.finish)."""
        ...


class Listener:
    """What every connection accepted on one listener shares: its router, limits,
    timeouts, metrics, the live connection sets (for the deadline sweep and for
    draining) and a coarse clock updated by the sweep, so per-request code never
    reads the time for deadlines."""

    __slots__ = (
        "access_log",
        "conns",
        "draining",
        "ids",
        "limits",
        "metrics",
        "monotonic",
        "now",
        "on_empty",
        "router",
        "scheme",
        "side",
        "timeouts",
        "upstreams",
        "wall",
    )

    def __init__(
        self,
        *,
        side: str,
        router: Router,
        metrics: GoldenMetrics,
        monotonic: Callable[[], float],
        limits: Limits,
        timeouts: Timeouts,
        ids: RequestIds,
        access_log: AccessLog | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.side = side
        self.router = router
        self.metrics = metrics
        self.monotonic = monotonic
        self.limits = limits
        self.timeouts = timeouts
        self.ids = ids
        self.access_log = access_log  # None: no access log, one check per request
        self.wall = wall or (lambda: 0.0)
        self.now = monotonic()
        self.draining = False
        self.on_empty: Callable[[], None] | None = None  # set while draining
        self.scheme = b"http"
        self.conns: set[DownstreamConnection] = set()
        self.upstreams: set[UpstreamConnection] = set()


class Exchange:
    """A request and its response while they cross the proxy."""

    __slots__ = (
        "conn",
        "connection",
        "ctl",
        "dst_principal",
        "ended",
        "endpoint",
        "expect",
        "flag",
        "framing",
        "head",
        "head_at",
        "head_only",
        "headers",
        "host",
        "info",
        "keep_alive",
        "method",
        "path",
        "pending",
        "pending_bytes",
        "req_bytes",
        "req_done",
        "request_id",
        "resp_bytes",
        "service",
        "src_principal",
        "started",
        "status",
        "target",
        "upgrade",
        "upstream",
        "verdict",
        "version",
        "xff",
        "xfp",
    )

    def __init__(self, conn: DownstreamConnection, started: float) -> None:
        self.conn = conn
        self.method = b""
        self.target = b""
        self.path = b""
        self.host = b""
        self.version = b"1.1"
        self.headers: Headers = []
        self.connection: bytes | None = None
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.framing = NO_BODY
        self.req_done = False
        self.req_bytes = 0
        self.pending: list[bytes] | None = []  # body parts before an upstream is attached
        self.pending_bytes = 0
        self.upstream: UpstreamConnection | None = None
        self.status = 0  # 0 until a final response head went downstream
        self.resp_bytes = 0
        self.started = started
        self.request_id = b""
        self.service = ""
        self.src_principal = "unknown"
        self.dst_principal = "unknown"
        self.flag = "-"
        self.info: RequestInfo | None = None
        self.verdict: GateVerdict | None = None
        self.head = b""  # the head to send upstream, built by the router
        self.head_only = False  # HEAD request: the response has no body
        self.ended = False
        self.expect = False
        self.xff: bytes | None = None
        self.xfp: bytes | None = None  # the client's x-forwarded-proto, re-added by routers
        # Outbound traffic management (meshlet.proxy.routing): ``endpoint`` is the
        # pool the default picker chose (its result is recorded at finish), ``ctl``
        # the plan executor of a routed request (None on the unrouted fast path),
        # ``head_at`` when the final response head arrived (latency for P2C-EWMA).
        self.endpoint: EndpointPool | None = None
        self.ctl: Flight | None = None
        self.head_at = 0.0
