"""The admin server: readiness, liveness, metrics, config and certificate views.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET and HEAD only, no
request bodies, keep-alive, an 8 KiB head limit and a read deadline. It is
reached by kubelet probes, Prometheus and operators on loopback, never by the
mesh's own traffic, so it trades throughput for having nothing to configure.

Endpoints (Envoy's admin paths where Envoy has one):

    /ready             200 "LIVE" when listeners are bound and an identity is
                       loaded, else 503 (also while draining)
    /live              200 while the process runs its event loop
    /stats/prometheus  golden metrics plus process gauges, Prometheus text
    /metrics           the same (Linkerd's path; Prometheus' default)
    /config_dump       the effective configuration as JSON, no private keys
    /certs             the workload certificate: SPIFFE ID, serial, validity,
                       seconds to expiry

With ``--workers N`` each worker's ``AdminServer`` listens on a private Unix
socket (a ``WorkerAdminSocket``) and the parent serves the sidecar's one public
admin endpoint with ``workers_admin.WorkersAdmin``, which asks every worker and
merges their answers; both share the HTTP handling of ``AdminHttp``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from meshlet.clock import Clock
from meshlet.proxy.memory import peak_rss_bytes, rss_bytes
from meshlet.telemetry.metrics import GoldenMetrics

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
# Probes and scrapers send their request at once; a peer that does not within
# 10 s is stuck or hostile (Kubernetes' default probe timeout is 1 s).
HEAD_TIMEOUT_S = 10.0

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_PROM = b"text/plain; version=0.0.4; charset=utf-8"


class AdminTarget(Protocol):
    """What the admin server reads from the proxy (``ProxyServer`` satisfies it)."""

    @property
    def ready(self) -> bool: ...

    @property
    def identity(self) -> Any: ...

    def config_dump(self) -> dict[str, Any]: ...


Route = Callable[[], "tuple[int, bytes, bytes] | Awaitable[tuple[int, bytes, bytes]]"]


class WorkerAdminSocket(socket.socket):
    """A ``--workers`` child's private admin listener (a Unix socket only the
    parent connects to) that knows the public address the parent serves the
    sidecar's one admin endpoint on, so the worker's ready line names that."""

    advertised: tuple[str, int]


class AdminHttp:
    """The admin HTTP/1.1 server itself; subclasses fill ``routes``."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._advertised: tuple[str, int] | None = None
        # Set when a drain starts, so /ready fails at once and load balancers and
        # kubelet stop sending new work while in-flight requests finish.
        self.draining = False
        self.routes: dict[bytes, Route] = {}

    async def start(self, host: str = "127.0.0.1", port: int = 15000, *, sock: Any = None) -> None:
        """Listen on ``host:port``, or on the pre-bound ``sock`` (tests, workers)."""
        if sock is not None:
            self._advertised = getattr(sock, "advertised", None)
            self._server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, host, port)

    @property
    def address(self) -> tuple[str, int]:
        """Where clients reach this admin (for a worker: its parent's address)."""
        if self._advertised is not None:
            return self._advertised
        if self._server is None or not self._server.sockets:
            raise RuntimeError("BUG: admin server not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # -- connection handling ------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), timeout=HEAD_TIMEOUT_S
                    )
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._respond(writer, 431, _TEXT, b"head too large\n", close=True)
                    return
                if len(head) > MAX_HEAD_BYTES:
                    await self._respond(writer, 431, _TEXT, b"head too large\n", close=True)
                    return
                keep_alive = await self._answer(head, writer)
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        request_line, _, header_block = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            await self._respond(writer, 400, _TEXT, b"bad request line\n", close=True)
            return False
        method, target, version = parts
        headers = header_block.lower()
        if b"content-length:" in headers or b"transfer-encoding:" in headers:
            # No endpoint takes a body; refusing them keeps framing trivial.
            await self._respond(writer, 400, _TEXT, b"request bodies not accepted\n", close=True)
            return False
        close = version == b"HTTP/1.0" or b"connection: close" in headers
        path = target.split(b"?", 1)[0]
        route = self.routes.get(path)
        if method not in (b"GET", b"HEAD"):
            status, ctype, body = 405, _TEXT, b"method not allowed\n"
        elif route is None:
            status, ctype, body = 404, _TEXT, b"not found\n"
        else:
            try:
                result = route()
                if inspect.isawaitable(result):
                    result = await result
                status, ctype, body = result
            except Exception:  # an admin bug must not kill the proxy; log it once here
                logger.exception("admin_endpoint_failed", extra={"path": path.decode()})
                status, ctype, body = 500, _TEXT, b"internal error\n"
        await self._respond(writer, status, ctype, body, close=close, head_only=method == b"HEAD")
        return not close

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        ctype: bytes,
        body: bytes,
        *,
        close: bool,
        head_only: bool = False,
    ) -> None:
        reason = _REASONS.get(status, b"")
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"cache-control: no-cache\r\n%s\r\n"
            % (status, reason, ctype, len(body), b"connection: close\r\n" if close else b"")
        )
        writer.write(head if head_only else head + body)
        await writer.drain()


class AdminServer(AdminHttp):
    """Serves the admin endpoints for one proxy (one worker process)."""

    def __init__(
        self,
        target: AdminTarget,
        metrics: GoldenMetrics,
        *,
        clock: Clock,
        extra_metrics: Callable[[], bytes] | None = None,
        worker: int = 0,
    ) -> None:
        super().__init__()
        self._target = target
        self._metrics = metrics
        self._clock = clock
        self._extra = extra_metrics
        self._worker = worker
        self.routes.update(
            {
                b"/ready": self._ready,
                b"/live": self._live,
                b"/stats/prometheus": self._prometheus,
                b"/metrics": self._prometheus,  # Linkerd's and most exporters' path
                b"/config_dump": self._config_dump,
                b"/certs": self._certs,
            }
        )

    # -- endpoints ----------------------------------------------------------

    def _ready(self) -> tuple[int, bytes, bytes]:
        if self._target.ready and not self.draining:
            return 200, _TEXT, b"LIVE\n"
        return 503, _TEXT, b"NOT READY\n"

    def _live(self) -> tuple[int, bytes, bytes]:
        return 200, _TEXT, b"OK\n"

    def _prometheus(self) -> tuple[int, bytes, bytes]:
        body = self._metrics.render() + self._process_metrics()
        if self._extra is not None:
            body += self._extra()
        return 200, _PROM, body

    def _config_dump(self) -> tuple[int, bytes, bytes]:
        dump = _scrub(self._target.config_dump())
        return 200, _JSON, json.dumps(dump, indent=2, default=str).encode() + b"\n"

    def _certs(self) -> tuple[int, bytes, bytes]:
        summary = certificate_summary(self._target.identity, now=self._clock.wall())
        body = {"certificates": [] if summary is None else [summary]}
        return 200, _JSON, json.dumps(body, indent=2).encode() + b"\n"

    def _process_metrics(self) -> bytes:
        lines = [
            "# HELP meshlet_process_resident_memory_bytes Resident set size.",
            "# TYPE meshlet_process_resident_memory_bytes gauge",
            f'meshlet_process_resident_memory_bytes{{worker="{self._worker}"}} {rss_bytes()}',
            "# HELP meshlet_process_peak_resident_memory_bytes Peak resident set size.",
            "# TYPE meshlet_process_peak_resident_memory_bytes gauge",
            f'meshlet_process_peak_resident_memory_bytes{{worker="{self._worker}"}} '
            f"{peak_rss_bytes()}",
        ]
        summary = certificate_summary(self._target.identity, now=self._clock.wall())
        if summary is not None:
            lines += [
                "# HELP meshlet_certificate_expiry_seconds Seconds until the workload "
                "certificate expires.",
                "# TYPE meshlet_certificate_expiry_seconds gauge",
                f"meshlet_certificate_expiry_seconds {summary['seconds_to_expiry']}",
            ]
        return ("\n".join(lines) + "\n").encode()


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}

# Keys whose values must never leave the process, whatever config_dump returns.
_SECRET_WORDS = ("private", "secret", "password", "token", "key_pem")


def _scrub(value: Any) -> Any:
    """Drop private material from a config dump, defensively (a key *path* is fine)."""
    if isinstance(value, dict):
        return {
            k: ("[redacted]" if any(w in str(k).lower() for w in _SECRET_WORDS) else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str | bytes) and (
        "PRIVATE KEY" in (value if isinstance(value, str) else value.decode("latin-1"))
    ):
        return "[redacted]"
    return value


def certificate_summary(identity: Any, *, now: float) -> dict[str, Any] | None:
    """The /certs view of the proxy's identity summary (duck-typed: ``spiffe_id``,
    ``serial``, ``not_after`` and optionally ``not_before``, as datetimes or
    POSIX timestamps)."""
    if identity is None:
        return None
    not_after = _timestamp(getattr(identity, "not_after", None))
    not_before = _timestamp(getattr(identity, "not_before", None))
    serial = getattr(identity, "serial", None)
    return {
        "spiffe_id": str(getattr(identity, "spiffe_id", "")),
        "serial": format(serial, "x") if isinstance(serial, int) else str(serial),
        "not_before": _iso(not_before),
        "not_after": _iso(not_after),
        "seconds_to_expiry": None if not_after is None else round(not_after - now, 3),
    }


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return float(value)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
