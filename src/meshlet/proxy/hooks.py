"""The seams where policy (and later other engines) plug into the request path.

The proxy knows nothing about authorization: it hands each inbound request to an
``InboundGate`` and obeys the ``GateVerdict``. The gate is optional (None allows
everything) so the sidecar runs with no policy engine loaded at all, and the
contract is a Protocol so the policy package never imports the proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from meshlet.http1.events import Headers


@dataclass(slots=True, kw_only=True)
class RequestInfo:
    """What a gate may look at for one request (or one opaque TCP connection).

    Not frozen: the driver builds one per request on the hot path and a plain
    slots dataclass is the cheapest shape. Gates must treat it as read-only.
    ``path`` is the raw request-target path with its query; ``host`` has no port.
    ``source_principal`` is the peer's SPIFFE ID when it presented a client
    certificate, else None (plaintext in PERMISSIVE/DISABLE mode).
    """

    method: str
    path: str
    host: str
    headers: Headers
    source_principal: str | None
    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int
    sni: str | None
    mtls: bool
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GateVerdict:
    """A gate's answer. A denial carries the status to answer with (403 by
    convention, 401 for failed authentication) and a reason for logs and the
    ``x-meshlet-error`` header; an allow may add or remove request headers
    (e.g. strip a verified JWT, add the authenticated claims)."""

    allowed: bool
    status: int = 200
    reason: str = ""
    set_headers: tuple[tuple[bytes, bytes], ...] = ()
    remove_headers: tuple[bytes, ...] = ()


ALLOW = GateVerdict(allowed=True)


class InboundGate(Protocol):
    """Authorization for traffic arriving at this workload."""

    def check(self, info: RequestInfo) -> GateVerdict | Awaitable[GateVerdict]:
        """Decide on one request. Return the verdict directly when it is known
        synchronously (the common case: no await on the hot path); return an
        awaitable only when an external check (CUSTOM / ext-authz) is needed."""
        ...

    def finish(self, info: RequestInfo, verdict: GateVerdict, response_code: int) -> None:
        """Called once per checked request when the response status is known,
        so audit records can carry the outcome."""
        ...

    def check_connection(self, info: RequestInfo) -> GateVerdict:
        """Decide on an opaque TCP connection (``protocol: tcp``); ``method`` and
        ``path`` are empty."""
        ...
