"""Who is in the mesh right now: connected sidecars, their endpoints and identities.

A sidecar registers by watching (every watch request refreshes its lease and
says where its inbound listener is bound); it leaves by saying so, by letting
its lease lapse (the control plane no longer hears from it), or by letting its
certificate expire without renewing. Time is always passed in, so the registry
is a plain object that unit tests drive with a ManualClock.

The registry also records, per proxy, which snapshot version it was sent, which
it acknowledged, and the last version it refused with its reason: that is what
``/v1/status`` reports and what an operator needs when a config change does not
take effect somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Nack", "ProxyRecord", "Registry"]

# A proxy that has not been heard from for this long is gone and its endpoint is
# withdrawn. Watches are re-sent at most every HOLD seconds (server.py), so three
# missed polls is a dead proxy, not a slow one (the same 3x rule as a Kubernetes
# node lease or a BFD detect multiplier).
DEFAULT_LEASE_S = 45.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack:
    """A snapshot version a proxy refused, and why (its own words)."""

    version: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyRecord:
    """One connected sidecar. ``address`` is its bound inbound listener, None for a
    client-only workload or before it has started listening."""

    proxy_id: str
    workload: str
    spiffe_id: str
    address: str | None
    cert_not_after: float  # wall time its certificate expires
    last_seen_s: float  # monotonic
    sent: str | None = None
    acked: str | None = None
    nack: Nack | None = None


class Registry:
    """Connected proxies keyed by their proxy id (chosen by the proxy at start)."""

    __slots__ = ("_proxies", "generation", "lease_s")

    def __init__(self, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.lease_s = lease_s
        self._proxies: dict[str, ProxyRecord] = {}
        # Bumped whenever the set of endpoints changes, so the server knows when
        # snapshots must be recompiled (a lease refresh alone does not bump it).
        self.generation = 0

    def __len__(self) -> int:
        return len(self._proxies)

    def get(self, proxy_id: str) -> ProxyRecord | None:
        return self._proxies.get(proxy_id)

    def proxies(self) -> tuple[ProxyRecord, ...]:
        """Every record, sorted by workload then id, so status output is stable."""
        return tuple(sorted(self._proxies.values(), key=lambda p: (p.workload, p.proxy_id)))

    def endpoints(self, workload: str) -> tuple[ProxyRecord, ...]:
        """The records of ``workload`` that serve traffic (have an inbound address)."""
        return tuple(p for p in self.proxies() if p.workload == workload and p.address is not None)

    def heartbeat(
        self,
        *,
        proxy_id: str,
        workload: str,
        spiffe_id: str,
        address: str | None,
        cert_not_after: float,
        now_s: float,
    ) -> bool:
        """Register or refresh ``proxy_id``; return True when the endpoint set changed."""
        old = self._proxies.get(proxy_id)
        if old is None:
            self._proxies[proxy_id] = ProxyRecord(
                proxy_id=proxy_id,
                workload=workload,
                spiffe_id=spiffe_id,
                address=address,
                cert_not_after=cert_not_after,
                last_seen_s=now_s,
            )
            self.generation += 1
            return True
        changed = (old.workload, old.spiffe_id, old.address) != (workload, spiffe_id, address)
        self._proxies[proxy_id] = replace(
            old,
            workload=workload,
            spiffe_id=spiffe_id,
            address=address,
            cert_not_after=cert_not_after,
            last_seen_s=now_s,
        )
        if changed:
            self.generation += 1
        return changed

    def leave(self, proxy_id: str) -> bool:
        """Forget ``proxy_id`` (it said goodbye); return True when it was known."""
        if self._proxies.pop(proxy_id, None) is None:
            return False
        self.generation += 1
        return True

    def expire(self, *, now_s: float, wall_s: float) -> tuple[ProxyRecord, ...]:
        """Drop proxies whose lease lapsed or whose certificate expired unrenewed;
        return them so the caller can log each removal."""
        gone = tuple(
            p
            for p in self._proxies.values()
            if now_s - p.last_seen_s > self.lease_s or wall_s >= p.cert_not_after
        )
        for record in gone:
            del self._proxies[record.proxy_id]
        if gone:
            self.generation += 1
        return gone

    # -- ACK / NACK bookkeeping ------------------------------------------------------

    def sent(self, proxy_id: str, version: str) -> None:
        """Record that ``version`` went out to ``proxy_id``."""
        record = self._proxies.get(proxy_id)
        if record is not None:
            self._proxies[proxy_id] = replace(record, sent=version)

    def ack(self, proxy_id: str, version: str) -> bool:
        """``proxy_id`` applied ``version``; False when the proxy is unknown."""
        record = self._proxies.get(proxy_id)
        if record is None:
            return False
        self._proxies[proxy_id] = replace(record, acked=version)
        return True

    def nack(self, proxy_id: str, version: str, reason: str) -> bool:
        """``proxy_id`` refused ``version`` (and keeps its last good one)."""
        record = self._proxies.get(proxy_id)
        if record is None:
            return False
        self._proxies[proxy_id] = replace(record, nack=Nack(version=version, reason=reason))
        return True
