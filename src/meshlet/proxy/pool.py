"""Upstream endpoints: keep-alive connection pools, and clusters that choose one.

``EndpointPool`` owns the idle connections to one address and opens new ones
(TCP, then TLS 1.3 with our client certificate, then a check that the peer's
SPIFFE ID is the one the endpoint config expects). ``Cluster`` is a service's
endpoints plus a picker; ``pick()``/``on_result()`` is the seam where a
routing plan (weights, P2C-EWMA, outlier ejection) plugs in later without
touching the drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from meshlet.config.bootstrap import Address
from meshlet.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from meshlet.proxy import rescue as rescues
from meshlet.proxy.connect_gate import ConnectGate
from meshlet.proxy.driver_up import UpstreamConnection
from meshlet.proxy.exchange import Exchange, Listener
from meshlet.proxy.tls import handshake_failure_reason, peer_spiffe_id
from meshlet.traffic.balancer import Endpoint, P2CEwma, RandomSource

__all__ = ["HANDSHAKE_TIMEOUT_S", "Cluster", "EndpointPool", "PoolSettings"]

# Bounds a stuck TLS peer, not a slow one (Envoy's transport_socket_connect_timeout
# has no default; ops' TCP mode uses the same 10 s).
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """A cluster's own connection settings (DestinationRule ``connectionPool``)."""

    connect_timeout_s: float | None = None  # None: the bootstrap's timeouts.connect_s
    idle_timeout_s: float | None = None  # None: the bootstrap's timeouts.idle_s
    max_requests_per_connection: int = 0  # 0: unlimited, Istio's default


class _Waiter:
    """A request in the pool's line (``ConnectGate``), with its wait timer."""

    __slots__ = ("ex", "timer", "waiting")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.timer: asyncio.TimerHandle | None = None
        self.waiting = True

    def leave(self) -> None:
        self.waiting = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _wants_connection(w: _Waiter) -> bool:
    """Still in line, and the request still wants this attempt: not answered,
    client not gone, no upstream attached (``pending`` is a list until then)."""
    ex = w.ex
    return (
        w.waiting
        and not ex.ended
        and not ex.conn.closed
        and ex.pending is not None
        and ex.upstream is None
    )


class EndpointPool:
    """Connections to one endpoint. ``ssl_context`` is a getter so a certificate
    reload is seen by the next connection without rebuilding pools.

    At most ``MAX_CONNECTING_PER_ENDPOINT`` connection attempts are in flight
    (``gate``); a request that finds no idle connection and no free attempt
    waits in line, oldest first, for a released connection or a free attempt,
    at most the connect timeout (then 503, as a connect timeout)."""

    __slots__ = (
        "address",
        "closing",
        "connect_timeout_s",
        "connecting",
        "gate",
        "identity",
        "idle",
        "idle_timeout_s",
        "key",
        "labels",
        "listener",
        "max_requests_per_connection",
        "owner",
        "served",
        "ssl_context",
        "tasks",
    )

    def __init__(
        self,
        *,
        address: Address,
        identity: str | None,
        listener: Listener,
        ssl_context: Callable[[], ssl.SSLContext] | None,
        labels: tuple[tuple[str, str], ...] = (),
        connect_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        max_requests_per_connection: int = 0,
    ) -> None:
        self.address = address
        self.identity = identity  # expected peer SPIFFE ID; None for plaintext (the app)
        self.listener = listener
        self.ssl_context = ssl_context
        self.labels = labels
        # A DestinationRule's connectionPool (tcp.connectTimeout, http.idleTimeout,
        # http.maxRequestsPerConnection); None/0: the bootstrap's timeouts, no cap.
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_requests_per_connection = max_requests_per_connection
        self.served: dict[UpstreamConnection, int] = {}  # only filled under a cap
        # The traffic engine's name for this endpoint (pickers, outlier detection).
        self.key = Endpoint(address=str(address), labels=labels)
        self.owner: Cluster | None = None  # set by the Cluster that holds this pool
        self.idle: list[UpstreamConnection] = []
        self.connecting = 0
        self.gate: ConnectGate[_Waiter] = ConnectGate()
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()

    def forward(self, ex: Exchange, *, retried: bool = False) -> None:
        """Send ``ex`` over an idle connection, or open one (the only await on the
        request path, and only when the pool is empty), or wait in line."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.attach(ex)
                return
        if self.gate.try_connect():
            self._start_connect(ex)
            return
        self._wait(ex)

    def _start_connect(self, ex: Exchange) -> None:
        """Open a connection for ``ex``, holding a gate slot already taken."""
        task = asyncio.get_running_loop().create_task(self._connect_then_attach(ex))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _wait(self, ex: Exchange) -> None:
        """Join the line. A timer per waiter (not the listener's sweep, which may
        be a second late): only requests that meet a cold or saturated pool wait."""
        w = _Waiter(ex)
        wait_s = self.connect_timeout_s or self.listener.timeouts.connect_s
        w.timer = asyncio.get_running_loop().call_later(wait_s, self._waited_too_long, w)
        self.gate.wait(w)
        self._admit_waiters()  # those ahead may have given up while slots are free

    def _waited_too_long(self, w: _Waiter) -> None:
        w.timer = None
        if not _wants_connection(w):
            w.waiting = False
            return
        w.waiting = False
        self._fail(
            w.ex,
            UpstreamConnectError(f"no connection to {self.address} within the connect timeout"),
        )

    def _admit_waiters(self) -> None:
        """Give free attempt slots to the oldest live waiters."""
        if self.closing:
            return
        while (w := self.gate.admit_next(_wants_connection)) is not None:
            w.leave()
            self._start_connect(w.ex)

    def _fail(self, ex: Exchange, exc: UpstreamError) -> None:
        kind = "timeout" if isinstance(exc, UpstreamTimeout) else "connect"
        self.listener.metrics.upstream_error(kind)
        if ex.pending is not None and not ex.ended:  # the request still waits for this
            ex.conn.respond_rescue(ex, rescues.from_error(exc))

    async def _connect_then_attach(self, ex: Exchange) -> None:
        try:
            try:
                conn = await self.connect()
            except UpstreamError as exc:
                self._fail(ex, exc)
                return
            if ex.ended or ex.conn.closed or ex.pending is None or ex.upstream is not None:
                # The client went away while we connected, or the request no longer
                # wants this attempt (pending is a list until an upstream is attached):
                # the connection serves the oldest waiter, or waits idle.
                self.release(conn)
                return
            conn.attach(ex)
        finally:
            # The slot frees after the connection found its request, so a waiter
            # takes a released connection before a new attempt is started for it.
            self.gate.connect_done()
            self._admit_waiters()

    async def connect(self) -> UpstreamConnection:
        """A new connection; raise UpstreamConnectError saying why.

        The TCP connect is bounded by ``connect_s`` (is the peer there at all?);
        the TLS handshake gets its own, longer budget, because a busy peer can
        take a while to do its share of the handshake and that is not a reason
        to fail a request (Envoy likewise bounds them separately).
        """
        loop = asyncio.get_running_loop()
        ctx = self.ssl_context() if self.ssl_context is not None else None
        self.connecting += 1
        try:
            sock = await self._tcp_connect(loop)
            try:
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, self.listener),
                    sock=sock,
                    ssl=ctx,
                    server_hostname="" if ctx is not None else None,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if ctx is not None else None,
                )
            except BaseException:
                sock.close()
                raise
        except TimeoutError as exc:
            self.listener.metrics.tls_handshake_failure("timeout")
            raise UpstreamConnectError(f"TLS handshake with {self.address} timed out") from exc
        except ssl.SSLError as exc:
            self.listener.metrics.tls_handshake_failure(handshake_failure_reason(exc))
            raise UpstreamConnectError(f"TLS to {self.address} failed: {exc.reason}") from exc
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise UpstreamConnectError(f"connect to {self.address} failed: {why}") from exc
        finally:
            self.connecting -= 1
        if ctx is not None and self.identity is not None:
            assert conn.transport is not None, "BUG: connected without a transport"
            peer = peer_spiffe_id(conn.transport.get_extra_info("ssl_object"))
            if peer != self.identity:
                conn.close()
                self.listener.metrics.tls_handshake_failure("wrong_identity")
                raise UpstreamConnectError(
                    f"{self.address} presented identity {peer or 'none'}, expected {self.identity}"
                )
        return conn

    async def _tcp_connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        host, port = self.address.host, self.address.port
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(
                loop.sock_connect(sock, (host, port)),
                self.connect_timeout_s or self.listener.timeouts.connect_s,
            )
        except TimeoutError as exc:
            sock.close()
            raise UpstreamConnectError(f"connect to {self.address} timed out") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished an exchange and may be reused: keep it idle,
        or close it when the pool is full or it has served its quota (Envoy's
        max_requests_per_connection closes it after that many requests)."""
        if conn.closed:
            return
        cap = self.max_requests_per_connection
        if cap:
            served = self.served.get(conn, 0) + 1
            if served >= cap:
                conn.close()  # discard() forgets its count
                return
            self.served[conn] = served
        if self.gate.line:
            w = self.gate.next_waiter(_wants_connection)
            if w is not None:  # the oldest waiter first, before the idle list
                w.leave()
                conn.attach(w.ex)
                return
        if len(self.idle) >= self.listener.limits.max_idle_per_endpoint:
            conn.close()
            return
        conn.deadline = self.listener.now + (self.idle_timeout_s or self.listener.timeouts.idle_s)
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if self.served:
            self.served.pop(conn, None)

    def with_settings(self, settings: PoolSettings) -> EndpointPool:
        """A separate pool to the same endpoint with its own connection settings:
        as in Envoy, a cluster whose DestinationRule sets them has its own pool."""
        return EndpointPool(
            address=self.address,
            identity=self.identity,
            listener=self.listener,
            ssl_context=self.ssl_context,
            labels=self.labels,
            connect_timeout_s=settings.connect_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
            max_requests_per_connection=settings.max_requests_per_connection,
        )

    def close(self) -> None:
        self.closing = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
        for task in list(self.tasks):
            task.cancel()
        while (w := self.gate.next_waiter(_wants_connection)) is not None:
            w.leave()
            self._fail(w.ex, UpstreamConnectError(f"endpoint {self.address} was removed"))


class Cluster:
    """One service's endpoints and how to choose among them: the traffic engine's
    P2C over peak-EWMA latency x outstanding (Linkerd's default balancer), fed the
    time to response head of every request. Routed hosts (``outbound.routing``)
    use per-subset state in ``meshlet.proxy.routing`` instead; this is the
    unrouted fast path.

    A cluster of one endpoint (the common sidecar case: one Service VIP, or one
    replica) has nothing to choose, so it skips P2C and its latency estimate and
    keeps only the in-flight count that ``meshlet_endpoint_outstanding_requests``
    reports."""

    __slots__ = ("_by_key", "_single", "_single_outstanding", "endpoints", "name", "picker",
                 "protocol")  # fmt: skip

    def __init__(self, *, name: str, protocol: str, endpoints: tuple[EndpointPool, ...]) -> None:
        if not endpoints:
            raise AssertionError("BUG: a cluster needs at least one endpoint")
        self.name = name
        self.protocol = protocol
        self.endpoints = endpoints
        for pool in endpoints:
            pool.owner = self
        self._by_key = {p.key: p for p in reversed(endpoints)}  # first pool wins
        self.picker = P2CEwma([p.key for p in endpoints])
        self._single = endpoints[0] if len(endpoints) == 1 else None
        self._single_outstanding = 0

    def pool_for(self, endpoint: Endpoint) -> EndpointPool | None:
        return self._by_key.get(endpoint)

    def pick(self, now: float, rng: RandomSource) -> EndpointPool:
        """An endpoint; counts as outstanding until ``on_result``."""
        single = self._single
        if single is not None:
            self._single_outstanding += 1
            return single
        chosen = self.picker.pick(now, rng)
        return self.endpoints[0] if chosen is None else self._by_key[chosen]

    def on_result(self, endpoint: EndpointPool, latency_s: float, status: int, now: float) -> None:
        """The request sent to ``endpoint`` ended (``status`` 0: no response)."""
        if self._single is not None:
            if self._single_outstanding > 0:
                self._single_outstanding -= 1
            return
        self.picker.on_result(endpoint.key, latency_s, status, now)

    def outstanding(self) -> Mapping[str, int]:
        """In-flight requests per endpoint address, for metrics."""
        single = self._single
        if single is not None:
            return {single.key.address: self._single_outstanding}
        return self.picker.outstanding()

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()
