"""Gateway API Inference Extension resources: InferencePool, InferenceModel, InferenceObjective.

Three shapes exist in the wild and users have YAML for each:

- ``InferencePool`` ``inference.networking.k8s.io/v1`` (GA: ``selector.matchLabels``,
  ``targetPorts``, ``endpointPickerRef``) and the older
  ``inference.networking.x-k8s.io/v1alpha2`` (``selector`` map, ``targetPortNumber``,
  ``extensionRef``).
- ``InferenceModel`` (v1alpha2): ``modelName``, ``criticality``
  (Critical/Standard/Sheddable), ``poolRef``, weighted ``targetModels``.
- ``InferenceObjective`` (v1alpha2, InferenceModel's successor): ``priority`` and
  ``poolRef``; requests name it in the ``x-gateway-inference-objective`` header.

meshlet picks endpoints inside the sidecar, so the endpoint-picker reference is
accepted (the upstream schema requires it) and not used. The per-endpoint
concurrency limit that drives load shedding has no upstream field; it is the
annotation ``meshlet.io/max-concurrency-per-endpoint``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError

from meshlet.config.istio_schema import IstioSchema, Metadata
from meshlet.config.source import Document
from meshlet.config.validation import problems_from
from meshlet.errors import ConfigError

GA_GROUP = "inference.networking.k8s.io"
ALPHA_GROUP = "inference.networking.x-k8s.io"
META_MAX_CONCURRENCY = "meshlet.io/max-concurrency-per-endpoint"
OBJECTIVE_HEADER = "x-gateway-inference-objective"


class Criticality(enum.Enum):
    CRITICAL = "Critical"
    STANDARD = "Standard"
    SHEDDABLE = "Sheddable"

    @classmethod
    def from_priority(cls, priority: int) -> Criticality:
        # The endpoint picker treats negative priority as sheddable; above zero
        # outranks the default, which is what Critical meant in InferenceModel.
        if priority < 0:
            return cls.SHEDDABLE
        return cls.CRITICAL if priority > 0 else cls.STANDARD


@dataclass(frozen=True, slots=True, kw_only=True)
class InferencePool:
    name: str
    source: str
    selector: tuple[tuple[str, str], ...]
    target_ports: tuple[int, ...]
    # None: no limit, never shed. There is no portable default: a vLLM replica's
    # useful concurrency depends on the GPU and max_num_seqs.
    max_concurrency_per_endpoint: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetModel:
    name: str
    weight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceModel:
    """A model name clients ask for, mapped to a pool; also built from an objective."""

    model_name: str
    source: str
    pool: str
    criticality: Criticality = Criticality.STANDARD
    target_models: tuple[TargetModel, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceObjective:
    name: str
    source: str
    pool: str
    priority: int = 0

    @property
    def criticality(self) -> Criticality:
        return Criticality.from_priority(self.priority)


class _LabelSelector(IstioSchema):
    match_labels: dict[str, str] = Field(min_length=1)


class _Port(IstioSchema):
    number: int = Field(ge=1, le=65535)


class _ExtensionRef(IstioSchema):
    group: str | None = None
    kind: str | None = None
    name: str
    port: _Port | None = None
    failure_mode: Literal["FailOpen", "FailClose"] | None = None
    port_number: int | None = None


class _PoolSpecV1(IstioSchema):
    selector: _LabelSelector
    target_ports: list[_Port] = Field(min_length=1, max_length=8)
    app_protocol: Literal["http", "kubernetes.io/h2c"] | None = None
    endpoint_picker_ref: _ExtensionRef | None = None


class _PoolSpecAlpha(IstioSchema):
    selector: dict[str, str] = Field(min_length=1)
    target_port_number: int = Field(ge=1, le=65535)
    extension_ref: _ExtensionRef | None = None


class _PoolV1(IstioSchema):
    api_version: Literal["inference.networking.k8s.io/v1"]
    kind: Literal["InferencePool"]
    metadata: Metadata
    spec: _PoolSpecV1
    status: dict[str, Any] | None = None


class _PoolAlpha(IstioSchema):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha2"]
    kind: Literal["InferencePool"]
    metadata: Metadata
    spec: _PoolSpecAlpha
    status: dict[str, Any] | None = None


class _PoolRef(IstioSchema):
    group: str | None = None
    kind: Literal["InferencePool"] | None = None
    name: str = Field(min_length=1)


class _Target(IstioSchema):
    name: str = Field(min_length=1)
    weight: int = Field(default=1, ge=0, le=1_000_000)


class _ModelSpec(IstioSchema):
    model_name: str = Field(min_length=1)
    criticality: Literal["Critical", "Standard", "Sheddable"] = "Standard"
    pool_ref: _PoolRef
    target_models: list[_Target] = Field(default_factory=list)


class _ModelAlpha(IstioSchema):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha2"]
    kind: Literal["InferenceModel"]
    metadata: Metadata
    spec: _ModelSpec
    status: dict[str, Any] | None = None


class _ObjectiveSpec(IstioSchema):
    priority: int = 0
    pool_ref: _PoolRef


class _Objective(IstioSchema):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha2"]
    kind: Literal["InferenceObjective"]
    metadata: Metadata
    spec: _ObjectiveSpec
    status: dict[str, Any] | None = None


def _validate(model: type[IstioSchema], document: Document) -> Any:
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, document)) from exc


def load_inference_pool(document: Document) -> InferencePool:
    api = document.data.get("apiVersion") if isinstance(document.data, dict) else None
    pool: _PoolV1 | _PoolAlpha = _validate(
        _PoolAlpha if api == f"{ALPHA_GROUP}/v1alpha2" else _PoolV1, document
    )
    limit: int | None = None
    raw = pool.metadata.annotations.get(META_MAX_CONCURRENCY)
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(
                document.problem(
                    ("metadata", "annotations", META_MAX_CONCURRENCY),
                    f"must be a positive integer, got {raw!r}",
                )
            )
        limit = int(raw)
    if isinstance(pool, _PoolV1):
        selector = pool.spec.selector.match_labels
        ports = tuple(p.number for p in pool.spec.target_ports)
    else:
        selector = pool.spec.selector
        ports = (pool.spec.target_port_number,)
    return InferencePool(
        name=pool.metadata.name.lower(),
        source=document.where(),
        selector=tuple(sorted(selector.items())),
        target_ports=ports,
        max_concurrency_per_endpoint=limit,
    )


def load_inference_model(document: Document) -> InferenceModel:
    m: _ModelAlpha = _validate(_ModelAlpha, document)
    return InferenceModel(
        model_name=m.spec.model_name,
        source=document.where(),
        pool=m.spec.pool_ref.name.lower(),
        criticality=Criticality(m.spec.criticality),
        target_models=tuple(
            TargetModel(name=t.name, weight=t.weight) for t in m.spec.target_models
        ),
    )


def load_inference_objective(document: Document) -> InferenceObjective:
    o: _Objective = _validate(_Objective, document)
    return InferenceObjective(
        name=o.metadata.name,
        source=document.where(),
        pool=o.spec.pool_ref.name.lower(),
        priority=o.spec.priority,
    )
