"""One access-log record per finished exchange, when an access log is configured.

Called from the routers' ``finish`` only when ``listener.access_log`` is set, so
a sidecar without an access log pays one attribute check per request. The log
itself (``meshlet.telemetry.accesslog``) batches lines; this only gathers the
fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlet.proxy.exchange import Exchange, Listener

__all__ = ["log_access"]


def _user_agent(ex: Exchange) -> str:
    for name, value in ex.headers:
        if name == b"user-agent":
            return value.decode("latin-1")
    return ""


def log_access(
    listener: Listener, ex: Exchange, *, reporter: str, duration_s: float, upstream_host: str
) -> None:
    """Record ``ex``; the wall-clock start is derived from the duration so the
    request path never reads the wall clock."""
    log = listener.access_log
    assert log is not None, "BUG: log_access without an access log"
    conn = ex.conn
    log.record(
        start_wall=listener.wall() - duration_s,
        reporter=reporter,
        method=ex.method.decode("ascii", "replace"),
        path=(ex.path or ex.target).decode("latin-1"),
        protocol="HTTP/1.0" if ex.version == b"1.0" else "HTTP/1.1",
        response_code=ex.status,
        response_flags=ex.flag,
        request_bytes=ex.req_bytes,
        response_bytes=ex.resp_bytes,
        duration_s=duration_s,
        authority=ex.host.decode("latin-1"),
        request_id=ex.request_id.decode("latin-1"),
        user_agent=_user_agent(ex),
        source_address=f"{conn.peer_ip}:{conn.peer_port}",
        upstream_host=upstream_host,
        source_principal=ex.src_principal,
        destination_principal=ex.dst_principal,
        mtls=conn.mtls if reporter == "destination" else True,
        upstream_model=ex.ctl.sent_model if ex.ctl is not None else None,
    )
