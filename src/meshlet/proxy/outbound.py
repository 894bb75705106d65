"""The outbound pipeline: plain HTTP from the local app to a mesh service.

The app talks to us as to a forward proxy (absolute-form request-target, what
``HTTP_PROXY`` makes curl/requests/httpx send) or as to the service itself
(origin-form + Host). The host, with any port removed, names the service; the
service's cluster picks an endpoint; the request goes over a pooled mTLS
connection that has proven the endpoint's SPIFFE ID.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshlet.errors import NoRoute
from meshlet.proxy import rescue as rescues
from meshlet.proxy.exchange import CHUNKED, Exchange, Listener
from meshlet.proxy.heads import request_head
from meshlet.proxy.pool import Cluster

if TYPE_CHECKING:
    from meshlet.proxy.routing import OutboundTraffic

__all__ = ["OutboundRouter", "split_host"]


def split_host(authority: bytes) -> bytes:
    """``host[:port]`` or ``[v6][:port]`` -> lowercased host without the port."""
    if authority.startswith(b"["):
        return authority[1 : authority.find(b"]")].lower()
    colon = authority.rfind(b":")
    return (authority[:colon] if colon >= 0 else authority).lower()


class OutboundRouter:
    """Routes requests from the local app to mesh services by host."""

    __slots__ = ("clusters", "listener", "local_principal", "rng", "traffic")

    def __init__(self, *, clusters: dict[str, Cluster], local_principal: Callable[[], str]) -> None:
        self.clusters = {name.encode("ascii").lower(): c for name, c in clusters.items()}
        self.local_principal = local_principal
        self.listener: Listener | None = None  # set by the server once the listener exists
        # Hosts with routing config (``outbound.routing``) go through the plan
        # executor; None when no routing files are configured.
        self.traffic: OutboundTraffic | None = None
        self.rng = random.Random()  # the balancer's two random draws

    def start(self, ex: Exchange) -> None:
        target = ex.target
        conn = ex.conn
        if target[:1] == b"/":
            authority = ex.host
            if not authority:
                conn.respond_rescue(
                    ex,
                    rescues.rescue(
                        400, "no_host", "NR", "HTTP/1.1 request without Host", close=True
                    ),
                )
                return
        elif target[:7].lower() == b"http://":
            # RFC 9112 §3.2.2: absolute-form; the URI's authority wins over Host.
            slash = target.find(b"/", 7)
            authority = target[7:slash] if slash >= 0 else target[7:]
            target = target[slash:] if slash >= 0 else b"/"
            ex.host = authority
            ex.headers = [h for h in ex.headers if h[0] != b"host"]
            ex.headers.append((b"host", authority))
        elif ex.method == b"CONNECT":
            conn.respond_rescue(
                ex,
                rescues.rescue(
                    405,
                    "connect_unsupported",
                    "NR",
                    "CONNECT tunnels are not supported; send plain http:// through the sidecar",
                ),
            )
            return
        else:
            conn.respond_rescue(
                ex,
                rescues.rescue(
                    400,
                    "bad_target",
                    "NR",
                    "request-target must be origin- or absolute-form",
                    close=True,
                ),
            )
            return
        ex.path = target
        host = split_host(authority)
        ex.src_principal = self.local_principal()
        traffic = self.traffic
        if traffic is not None and host in traffic.hosts:
            traffic.start(ex, host, target, self._extra(ex))
            return
        cluster = self.clusters.get(host)
        if cluster is None:
            ex.service = "unknown"
            shown = host.decode("ascii", "replace")[:100]
            conn.respond_rescue(
                ex, rescues.from_error(NoRoute(f"no mesh service {shown!r} in outbound.services"))
            )
            return
        ex.service = cluster.name
        endpoint = cluster.pick(conn.listener.now, self.rng)
        ex.endpoint = endpoint
        ex.dst_principal = endpoint.identity or "unknown"
        ex.head = request_head(
            ex.method,
            target,
            ex.headers,
            connection=ex.connection,
            extra=self._extra(ex),
            chunked=ex.framing == CHUNKED,
            upgrade=ex.upgrade,
        )
        endpoint.forward(ex)

    def _extra(self, ex: Exchange) -> list[bytes]:
        """The lines the sidecar adds: x-request-id, x-forwarded-for/-proto."""
        conn = ex.conn
        extra = []
        if not ex.request_id:
            ex.request_id = conn.listener.ids.next()
        extra.append(b"x-request-id: " + ex.request_id)
        if ex.xff:
            extra.append(b"x-forwarded-for: " + ex.xff + b", " + conn.peer_ip.encode("ascii"))
        else:
            extra.append(conn.xff_line)
        extra.append(b"x-forwarded-proto: " + (ex.xfp or b"http"))
        return extra

    def finish(self, ex: Exchange) -> None:
        listener = ex.conn.listener
        now = listener.monotonic()
        endpoint = ex.endpoint
        if endpoint is not None:
            ex.endpoint = None
            if endpoint.owner is not None:
                status = ex.status or (499 if ex.flag == "DC" else 0)
                endpoint.owner.on_result(endpoint, (ex.head_at or now) - ex.started, status, now)
        elif ex.ctl is not None:
            ex.ctl.finish(ex, now)
        listener.metrics.request(
            reporter="source",
            source_principal=ex.src_principal,
            destination_principal=ex.dst_principal,
            destination_service=ex.service,
            request_protocol="http",
            response_code=ex.status,
            mtls=True,
            duration_s=now - ex.started,
            request_bytes=ex.req_bytes,
            response_bytes=ex.resp_bytes,
            response_flags=ex.flag,
        )
        if listener.access_log is not None:
            from meshlet.proxy.access import log_access

            if endpoint is not None:
                upstream = str(endpoint.address)
            else:
                upstream = ex.ctl.upstream_host if ex.ctl is not None else "-"
            log_access(
                listener, ex, reporter="source", duration_s=now - ex.started, upstream_host=upstream
            )
