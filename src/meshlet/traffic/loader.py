"""``load_routing(paths) -> RoutingConfig``: the one entry for routing YAML.

The proxy's static bootstrap (``outbound.routing``), ``meshlet route explain`` and
``meshlet analyze`` all call this. Every document of every file is read and
every problem is reported at once (STYLE.md §4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlet.config.gateway_api import load_http_route
from meshlet.config.inference import (
    InferenceModel,
    InferenceObjective,
    InferencePool,
    load_inference_model,
    load_inference_objective,
    load_inference_pool,
)
from meshlet.config.istio_destination_rule import load_destination_rule
from meshlet.config.istio_networking import load_virtual_service
from meshlet.config.routing import DestinationPolicy, HostRoutes
from meshlet.config.source import Document, load_paths
from meshlet.errors import ConfigError

ROUTING_KINDS = frozenset(
    {
        "VirtualService",
        "DestinationRule",
        "HTTPRoute",
        "InferencePool",
        "InferenceModel",
        "InferenceObjective",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    """Everything routing needs, merged across files; immutable once loaded."""

    hosts: Mapping[str, HostRoutes] = field(default_factory=dict)
    destinations: Mapping[str, DestinationPolicy] = field(default_factory=dict)
    pools: Mapping[str, InferencePool] = field(default_factory=dict)
    models: Mapping[str, InferenceModel] = field(default_factory=dict)
    objectives: Mapping[str, InferenceObjective] = field(default_factory=dict)


class _Builder:
    def __init__(self) -> None:
        self.hosts: dict[str, HostRoutes] = {}
        self.host_source: dict[str, str] = {}
        self.destinations: dict[str, DestinationPolicy] = {}
        self.pools: dict[str, InferencePool] = {}
        self.models: dict[str, InferenceModel] = {}
        self.objectives: dict[str, InferenceObjective] = {}
        self.problems: list[str] = []

    def add_hosts(self, doc: Document, found: list[HostRoutes]) -> None:
        for hr in found:
            have = self.hosts.get(hr.host)
            if have is None:
                self.hosts[hr.host] = hr
                self.host_source[hr.host] = doc.where()
                continue
            if have.routes and hr.routes and have.routes[0].precedence != hr.routes[0].precedence:
                self.problems.append(
                    doc.problem(
                        (),
                        (
                            f"host {hr.host!r} is already routed by "
                            f"{self.host_source[hr.host]} with the other API; route a host "
                            "with VirtualServices or HTTPRoutes, not both"
                        ),
                    )
                )
                continue
            # Istio merges VirtualServices for one host; meshlet keeps load order.
            self.hosts[hr.host] = HostRoutes(host=hr.host, routes=have.routes + hr.routes)

    def add_unique(
        self, table: dict[str, Any], key: str, value: Any, doc: Document, what: str
    ) -> None:
        if key in table:
            self.problems.append(
                doc.problem((), f"{what} {key!r} is already defined at {table[key].source}")
            )
        else:
            table[key] = value

    def add(self, doc: Document) -> None:
        kind = doc.data.get("kind") if isinstance(doc.data, dict) else None
        if kind == "VirtualService":
            self.add_hosts(doc, load_virtual_service(doc))
        elif kind == "HTTPRoute":
            self.add_hosts(doc, load_http_route(doc))
        elif kind == "DestinationRule":
            dr = load_destination_rule(doc)
            self.add_unique(self.destinations, dr.host, dr, doc, "DestinationRule for host")
        elif kind == "InferencePool":
            pool = load_inference_pool(doc)
            self.add_unique(self.pools, pool.name, pool, doc, "InferencePool")
        elif kind == "InferenceModel":
            model = load_inference_model(doc)
            self.add_unique(self.models, model.model_name, model, doc, "InferenceModel for")
        elif kind == "InferenceObjective":
            obj = load_inference_objective(doc)
            self.add_unique(self.objectives, obj.name, obj, doc, "InferenceObjective")
        else:
            self.problems.append(
                doc.problem(
                    ("kind",),
                    (
                        f"kind {kind!r} is not a routing resource (expected one of "
                        f"{', '.join(sorted(ROUTING_KINDS))})"
                    ),
                )
            )

    def check_references(self) -> None:
        for model in self.models.values():
            if model.pool not in self.pools:
                self.problems.append(
                    f"{model.source}: InferenceModel {model.model_name!r}: "
                    f"poolRef {model.pool!r} names no InferencePool"
                )
        for obj in self.objectives.values():
            if obj.pool not in self.pools:
                self.problems.append(
                    f"{obj.source}: InferenceObjective {obj.name!r}: "
                    f"poolRef {obj.pool!r} names no InferencePool"
                )
        for hr in self.hosts.values():
            for route in hr.routes:
                for d in route.destinations:
                    if d.kind.value == "inference_pool" and d.host not in self.pools:
                        self.problems.append(
                            f"{route.source}: backendRef InferencePool {d.host!r} is not defined"
                        )
                    dr = self.destinations.get(d.host)
                    if d.subset and (dr is None or all(s.name != d.subset for s in dr.subsets)):
                        self.problems.append(
                            f"{route.source}: subset {d.subset!r} of host "
                            f"{d.host!r} is not defined by a DestinationRule"
                        )


def build_routing(
    documents: Iterable[Document], on_other_kind: Callable[[Document], None] | None = None
) -> RoutingConfig:
    """Routing from already-parsed documents. Documents of other kinds go to
    ``on_other_kind`` when given (``meshlet analyze`` mixes policy and routing),
    otherwise they are errors."""
    b = _Builder()
    for doc in documents:
        kind = doc.data.get("kind") if isinstance(doc.data, dict) else None
        if on_other_kind is not None and kind not in ROUTING_KINDS:
            on_other_kind(doc)
            continue
        try:
            b.add(doc)
        except ConfigError as exc:
            b.problems.extend(exc.problems)
    b.check_references()
    if b.problems:
        raise ConfigError(b.problems)
    return RoutingConfig(
        hosts=b.hosts,
        destinations=b.destinations,
        pools=b.pools,
        models=b.models,
        objectives=b.objectives,
    )


def load_routing(paths: Iterable[str | Path]) -> RoutingConfig:
    """Load files and directories of routing YAML; raise ConfigError with every problem."""
    return build_routing(load_paths(paths))
