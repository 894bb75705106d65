"""Endpoint pickers: which replica of a cluster gets the next request.

Every picker has the same two calls, and time and randomness are passed in:

    ep = picker.pick(now, rng, hash_key=..., exclude=ejected)   # outstanding += 1
    picker.on_result(ep, latency_s, status, now)                # outstanding -= 1

The default, ``P2CEwma``, is Linkerd's (and Finagle's) "peak EWMA" balancer:
draw two endpoints at random, send to the one with the lower
``latency_ewma * (outstanding + 1)``. Model replicas differ in speed (GPU type,
batch size, queue depth), and this cost sees both slowness and queueing, while
drawing two at random instead of taking the global minimum avoids every proxy
herding onto the same "best" replica.

Decay constant: ``DECAY_S = 10.0``, Linkerd's default. The EWMA weight of an old
observation after ``dt`` seconds is ``exp(-dt / 10 s)``: long enough to smooth
per-request noise of inference latencies (hundreds of ms to seconds), short
enough that a replica that got slow is avoided within a few seconds of traffic
(the estimate is "peak": a slower sample replaces it at once) and one that
recovered is retried after ~10-30 s of decay toward zero.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshlet.config.routing import LbAlgorithm, LoadBalancer
from meshlet.traffic.hashing import HashRing, MaglevTable, stable_hash
from meshlet.traffic.match import RequestAttributes

DECAY_S = 10.0  # Linkerd's default EWMA decay; see the module docstring
DEFAULT_RTT_S = 0.030  # Linkerd's default_rtt: the prior for an endpoint never measured
_GATEWAY_ERRORS = frozenset({0, 502, 503, 504})


class RandomSource(Protocol):
    """``random.Random`` satisfies this; pure code never imports ``random``."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    address: str  # "host:port"
    labels: tuple[tuple[str, str], ...] = ()

    def has_labels(self, wanted: Collection[tuple[str, str]]) -> bool:
        mine = dict(self.labels)
        return all(mine.get(k) == v for k, v in wanted)


class _Stats:
    __slots__ = ("ewma_s", "outstanding", "stamp")

    def __init__(self) -> None:
        self.outstanding = 0
        self.ewma_s = DEFAULT_RTT_S
        self.stamp: float | None = None


class EndpointPicker(ABC):
    """Common bookkeeping: endpoints, outstanding counts, exclusion."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints: tuple[Endpoint, ...] = ()
        self._stats: dict[Endpoint, _Stats] = {}
        self.update(endpoints)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint set, keeping stats of endpoints that stay."""
        self._endpoints = tuple(dict.fromkeys(endpoints))
        self._stats = {e: self._stats.get(e) or _Stats() for e in self._endpoints}
        self._rebuilt()

    def _rebuilt(self) -> None:
        """Hook for pickers with derived structures (hash rings)."""
        return None

    def pick(
        self,
        now: float,
        rng: RandomSource,
        *,
        hash_key: str | None = None,
        exclude: Collection[Endpoint] = (),
    ) -> Endpoint | None:
        """An endpoint not in ``exclude`` (ejected ones), or None if none is left.
        The pick counts as an outstanding request until ``on_result``."""
        candidates = self._endpoints
        if exclude:
            candidates = tuple(e for e in candidates if e not in exclude)
        if not candidates:
            return None
        chosen = self._choose(candidates, now, rng, hash_key, exclude)
        self._stats[chosen].outstanding += 1
        return chosen

    @abstractmethod
    def _choose(
        self,
        candidates: tuple[Endpoint, ...],
        now: float,
        rng: RandomSource,
        hash_key: str | None,
        exclude: Collection[Endpoint],
    ) -> Endpoint: ...

    def on_result(self, endpoint: Endpoint, latency_s: float, status: int, now: float) -> None:
        """The request sent to ``endpoint`` finished: ``status`` 0 means no response
        (connect failure, reset, timeout)."""
        stats = self._stats.get(endpoint)
        if stats is None:  # removed by update() while in flight
            return
        stats.outstanding = max(0, stats.outstanding - 1)
        self._observe(stats, latency_s, status, now)

    def _observe(self, stats: _Stats, latency_s: float, status: int, now: float) -> None:
        """Only latency-aware pickers keep an estimate."""
        return None

    def outstanding(self) -> Mapping[str, int]:
        """In-flight requests per endpoint address, for metrics."""
        return {e.address: s.outstanding for e, s in self._stats.items()}

    def outstanding_of(self, endpoint: Endpoint) -> int:
        stats = self._stats.get(endpoint)
        return 0 if stats is None else stats.outstanding


def _two(n: int, rng: RandomSource) -> tuple[int, int]:
    i = int(rng.random() * n) % n
    j = int(rng.random() * (n - 1)) % (n - 1)
    return i, j + 1 if j >= i else j


class RoundRobin(EndpointPicker):
    def _rebuilt(self) -> None:
        self._next = 0

    def _choose(
        self,
        candidates: tuple[Endpoint, ...],
        now: float,
        rng: RandomSource,
        hash_key: str | None,
        exclude: Collection[Endpoint],
    ) -> Endpoint:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class RandomPick(EndpointPicker):
    def _choose(
        self,
        candidates: tuple[Endpoint, ...],
        now: float,
        rng: RandomSource,
        hash_key: str | None,
        exclude: Collection[Endpoint],
    ) -> Endpoint:
        return candidates[int(rng.random() * len(candidates)) % len(candidates)]


class LeastRequest(EndpointPicker):
    """Envoy's LEAST_REQUEST: the fewer outstanding of two random endpoints."""

    def _choose(
        self,
        candidates: tuple[Endpoint, ...],
        now: float,
        rng: RandomSource,
        hash_key: str | None,
        exclude: Collection[Endpoint],
    ) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        i, j = _two(len(candidates), rng)
        a, b = candidates[i], candidates[j]
        return b if self._stats[b].outstanding < self._stats[a].outstanding else a


class P2CEwma(EndpointPicker):
    """Power of two choices over peak-EWMA latency x (outstanding + 1)."""

    def __init__(self, endpoints: Sequence[Endpoint], *, decay_s: float = DECAY_S) -> None:
        self.decay_s = decay_s
        super().__init__(endpoints)

    def cost(self, endpoint: Endpoint, now: float) -> float:
        stats = self._stats[endpoint]
        return self._decayed(stats, now) * (stats.outstanding + 1)

    def ewma_s(self, endpoint: Endpoint, now: float) -> float:
        return self._decayed(self._stats[endpoint], now)

    def _decayed(self, stats: _Stats, now: float) -> float:
        # Finagle reads the estimate as observe(0): it decays toward zero while
        # nothing is learned, so a replica once slow is eventually tried again.
        if stats.stamp is None:
            return stats.ewma_s
        elapsed = max(0.0, now - stats.stamp)
        stats.ewma_s *= math.exp(-elapsed / self.decay_s)
        stats.stamp = now
        return stats.ewma_s

    def _choose(
        self,
        candidates: tuple[Endpoint, ...],
        now: float,
        rng: RandomSource,
        hash_key: str | None,
        exclude: Collection[Endpoint],
    ) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        i, j = _two(len(candidates), rng)
        a, b = candidates[i], candidates[j]
        return b if self.cost(b, now) < self.cost(a, now) else a

    def _observe(self, stats: _Stats, latency_s: float, status: int, now: float) -> None:
        est = self._decayed(stats, now) if stats.stamp is not None else stats.ewma_s
        if status in _GATEWAY_ERRORS:
            # A fast failure must not make a broken replica look fast.
            latency_s = max(latency_s, 2 * est, DEFAULT_RTT_S)
        if stats.stamp is None or latency_s > est:
            # The first measurement replaces the prior; after that the estimate is
            # peak-sensitive: slowness is believed at once, speed only gradually.
            stats.ewma_s = latency_s
        else:
            w = math.exp(-max(0.0, now - (stats.stamp or now)) / self.decay_s)
            stats.ewma_s = est * w + latency_s * (1 - w)
        stats.stamp = now


class ConsistentHash(EndpointPicker):
    """Ring hash or Maglev on a request key; without a key, a random endpoint."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        maglev: bool = False,
        ring_size: int = 1024,
        table_size: int = 65537,
    ) -> None:
        self._maglev, self._ring_size, self._table_size = maglev, ring_size, table_size
        super().__init__(endpoints)

    def _rebuilt(self) -> None:
        addrs = [e.address for e in self._endpoints]
        self._lookup: MaglevTable | HashRing = (
            MaglevTable(addrs, self._table_size)
            if self._maglev
            else HashRing(addrs, self._ring_size)
        )

    def _choose(
        self,
        candidates: tuple[Endpoint, ...],
        now: float,
        rng: RandomSource,
        hash_key: str | None,
        exclude: Collection[Endpoint],
    ) -> Endpoint:
        if hash_key is None or not self._endpoints:
            return candidates[int(rng.random() * len(candidates)) % len(candidates)]
        skip = frozenset(self._endpoints.index(e) for e in exclude if e in self._stats)
        return self._endpoints[self._lookup.find(stable_hash(hash_key), skip)]


def make_picker(lb: LoadBalancer, endpoints: Sequence[Endpoint]) -> EndpointPicker:
    """The picker a DestinationRule's ``loadBalancer`` asks for."""
    match lb.algorithm:
        case LbAlgorithm.ROUND_ROBIN:
            return RoundRobin(endpoints)
        case LbAlgorithm.RANDOM:
            return RandomPick(endpoints)
        case LbAlgorithm.LEAST_REQUEST:
            return LeastRequest(endpoints)
        case LbAlgorithm.RING_HASH:
            return ConsistentHash(endpoints, ring_size=lb.ring_size)
        case LbAlgorithm.MAGLEV:
            return ConsistentHash(endpoints, maglev=True, table_size=lb.maglev_table_size)
        case _:
            return P2CEwma(endpoints)


def hash_key(lb: LoadBalancer, attrs: RequestAttributes) -> str | None:
    """The consistent-hash key of a request under ``lb``, or None if it has none."""
    if lb.hash_header is not None:
        return attrs.headers.get(lb.hash_header)
    if lb.hash_cookie is not None:
        for part in attrs.headers.get("cookie", "").split(";"):
            name, eq, value = part.strip().partition("=")
            if eq and name == lb.hash_cookie:
                # A quoted value hashes as its content, so the cookie we set
                # (quoted, as Envoy sets it) keys the same when it comes back.
                return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
        return None
    if lb.hash_source_ip:
        return attrs.source_ip or None
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCookie:
    """A cookie generated for a request that lacked it: ``value`` is the request's
    hash key, ``set_cookie`` the ``Set-Cookie`` field value for the response."""

    value: str
    set_cookie: str


def session_cookie(lb: LoadBalancer, rng: RandomSource) -> SessionCookie | None:
    """Istio's ``httpCookie`` with a ``ttl``: a request without the cookie gets a
    new one, hashed now and set on the response so the client sticks to the
    endpoint it reached. The value is random (Envoy hashes the connection's
    addresses instead; either way a new client lands anywhere). As Envoy writes
    it: quoted value, ``Max-Age`` unless the TTL is 0 (a session cookie), the
    configured ``Path``, ``HttpOnly``. None: the policy generates no cookie."""
    if lb.hash_cookie is None or lb.hash_cookie_ttl_s is None:
        return None
    high, low = int(rng.random() * 2**32), int(rng.random() * 2**32)
    value = f"{high:08x}{low:08x}"
    parts = [f'{lb.hash_cookie}="{value}"']
    max_age = int(lb.hash_cookie_ttl_s)
    if max_age > 0:
        parts.append(f"Max-Age={max_age}")
    if lb.hash_cookie_path:
        parts.append(f"Path={lb.hash_cookie_path}")
    parts.append("HttpOnly")
    return SessionCookie(value=value, set_cookie="; ".join(parts))
