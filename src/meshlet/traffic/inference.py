"""Inference pools in the sidecar: model -> pool, weighted target models, criticality
and load shedding (the Gateway API Inference Extension's ideas, without an
external endpoint picker).

Shedding rule: when *every* endpoint of a pool is at its concurrency limit,
a Sheddable request is refused at once (429, ``Overloaded``) rather than queued,
while Critical and Standard requests queue for the next free slot. Queueing a
request a replica cannot start for seconds only moves its latency into the
caller's timeout; answering 429 at once lets a batch client back off.

Requests that wait (for a pool slot, or for a connection under
``maxConnections``) wait in a ``SlotQueue``: Critical first, then Standard, then
Sheddable, first come first served within each. When slots free up,
``SlotQueue.release`` hands out no more requests than there are free slots (no
endpoint goes past its limit) and sheds the Sheddable requests still waiting
while every endpoint is full, as if they had arrived just then.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from meshlet.config.inference import (
    OBJECTIVE_HEADER,
    Criticality,
    InferenceModel,
    InferenceObjective,
    InferencePool,
)

T = TypeVar("T")


class Admit(enum.Enum):
    SEND = "send"  # an endpoint has room
    QUEUE = "queue"  # all full; wait for a slot
    SHED = "shed"  # all full and the request is sheddable: 429 now


def admit(
    criticality: Criticality, outstanding: Iterable[int], limit_per_endpoint: int | None
) -> Admit:
    """Pure admission: ``outstanding`` holds the in-flight count of each endpoint."""
    if limit_per_endpoint is None:
        return Admit.SEND
    counts = list(outstanding)
    if not counts or any(c < limit_per_endpoint for c in counts):
        return Admit.SEND if counts else Admit.QUEUE
    return Admit.SHED if criticality is Criticality.SHEDDABLE else Admit.QUEUE


def free_slots(outstanding: Iterable[int], limit_per_endpoint: int | None) -> int | None:
    """How many more requests the pool may start now (None: no limit)."""
    if limit_per_endpoint is None:
        return None
    return sum(max(0, limit_per_endpoint - c) for c in outstanding)


# Service order of waiting requests: the Inference Extension serves Critical
# before Standard before Sheddable; arrival order within one criticality.
_ORDER = (Criticality.CRITICAL, Criticality.STANDARD, Criticality.SHEDDABLE)


@dataclass(frozen=True, slots=True)
class Release(Generic[T]):
    """What ``SlotQueue.release`` decided: start ``send`` now, in this order, and
    answer ``shed`` with 429. Both have left the queue."""

    send: tuple[T, ...] = ()
    shed: tuple[T, ...] = ()


class SlotQueue(Generic[T]):
    """Requests waiting for a slot, in service order (see ``_ORDER``)."""

    __slots__ = ("_lines", "_size")

    def __init__(self) -> None:
        self._lines: dict[Criticality, deque[T]] = {c: deque() for c in _ORDER}
        self._size = 0  # kept, not summed: every routed request asks if anyone waits

    def push(self, item: T, criticality: Criticality, *, front: bool = False) -> None:
        """Wait in line; ``front`` for one that already waited and lost its slot
        (a retry whose endpoint filled while it backed off)."""
        line = self._lines[criticality]
        if front:
            line.appendleft(item)
        else:
            line.append(item)
        self._size += 1

    def remove(self, item: T) -> bool:
        """Leave the line (the client left, or the wait timed out)."""
        for line in self._lines.values():
            if item in line:
                line.remove(item)
                self._size -= 1
                return True
        return False

    def __contains__(self, item: object) -> bool:
        return self._size > 0 and any(item in line for line in self._lines.values())

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        for c in _ORDER:
            yield from self._lines[c]

    def clear(self) -> None:
        for line in self._lines.values():
            line.clear()
        self._size = 0

    def release(
        self,
        outstanding: Iterable[int],
        limit_per_endpoint: int | None,
        free_connections: int,
    ) -> Release[T]:
        """Who starts now that slots may have freed up. ``outstanding``: in-flight
        count per endpoint; ``free_connections``: room under ``maxConnections``.

        A request is checked against the pool when it leaves the line, not only
        when it joined it: a Sheddable request that queued for a connection while
        the pool had room is shed if the pool is full by then, and the free slots
        go to Critical, then Standard, then Sheddable requests."""
        if not self._size:
            return Release()
        counts = list(outstanding)
        slots = free_slots(counts, limit_per_endpoint)
        room = free_connections if slots is None else min(slots, free_connections)
        send: list[T] = []
        for c in _ORDER:
            line = self._lines[c]
            while line and len(send) < room:
                send.append(line.popleft())
        shed: tuple[T, ...] = ()
        sheddable = self._lines[Criticality.SHEDDABLE]
        if sheddable and counts and slots is not None and slots <= len(send):
            shed = tuple(sheddable)  # every endpoint is full once ``send`` starts
            sheddable.clear()
        self._size -= len(send) + len(shed)
        return Release(tuple(send), shed)


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceTarget:
    """What a pool-routed request resolved to."""

    pool: str
    requested_model: str | None
    target_model: str | None  # the name to send upstream (a LoRA adapter or version)
    criticality: Criticality
    max_concurrency_per_endpoint: int | None
    selector: tuple[tuple[str, str], ...]
    target_ports: tuple[int, ...]


def resolve(
    pool: InferencePool,
    model_name: str | None,
    headers: Mapping[str, str],
    models: Mapping[str, InferenceModel],
    objectives: Mapping[str, InferenceObjective],
    rng_value: float,
) -> InferenceTarget:
    """Resolve criticality and the target model for a request to ``pool``.
    ``rng_value`` in [0, 1) picks among weighted target models."""
    criticality = Criticality.STANDARD
    target = model_name
    model = models.get(model_name) if model_name is not None else None
    if model is not None and model.pool == pool.name:
        criticality = model.criticality
        target = pick_weighted([(t.name, t.weight) for t in model.target_models], rng_value) or (
            model_name
        )
    objective_name = headers.get(OBJECTIVE_HEADER)
    objective = objectives.get(objective_name) if objective_name else None
    if objective is not None and objective.pool == pool.name:
        criticality = objective.criticality
    return InferenceTarget(
        pool=pool.name,
        requested_model=model_name,
        target_model=target,
        criticality=criticality,
        max_concurrency_per_endpoint=pool.max_concurrency_per_endpoint,
        selector=pool.selector,
        target_ports=pool.target_ports,
    )


def pick_weighted(items: list[tuple[T, int]], rng_value: float) -> T | None:
    """The item whose cumulative-weight interval holds ``rng_value * total``."""
    total = sum(w for _, w in items)
    if total <= 0:
        return None
    point = rng_value * total
    acc = 0
    for item, weight in items:
        acc += weight
        if point < acc:
            return item
    return items[-1][0]
