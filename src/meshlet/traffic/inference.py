"""Inference pools in the sidecar: model -> pool, weighted target models, criticality
and load shedding (the Gateway API Inference Extension's ideas, without an
external endpoint picker).

Shedding rule: when *every* endpoint of a pool is at its concurrency limit,
a Sheddable request is refused at once (429, ``Overloaded``) rather than queued,
while Critical and Standard requests queue for the next free slot. Queueing a
request a replica cannot start for seconds only moves its latency into the
caller's timeout; answering 429 at once lets a batch client back off.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

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
