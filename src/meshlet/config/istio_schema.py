"""pydantic pieces shared by the Istio and Gateway API edge schemas.

Every loader of ``networking.istio.io``, ``security.istio.io`` and Gateway API
resources validates with the same strict base, reads the same metadata and
reports pydantic errors the same way (``file:line: path: message``). meshlet's
per-route annotations are read here too: VirtualService and HTTPRoute share them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from meshlet.config.durations import parse_duration
from meshlet.config.source import Document
from meshlet.config.validation import problems_from
from meshlet.errors import ConfigError

# ------------------------------------------------------------------ durations


def _checked_duration(text: str) -> str:
    parse_duration(text)
    return text


# A duration kept as text in the schema, checked where pydantic can locate the error.
Duration = Annotated[str, AfterValidator(_checked_duration)]

# --------------------------------------------------------------------- schema


class IstioSchema(BaseModel):
    """Base of every Istio/Gateway API edge schema: an unknown field is refused
    (``extra="forbid"``) rather than ignored, and fields are camelCase in YAML."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)


class Metadata(BaseModel):
    """Kubernetes object metadata: only what meshlet reads; the rest is bookkeeping."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel)
    name: str
    namespace: str = "default"
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = None


def validate_document(model: type[IstioSchema], document: Document) -> Any:
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, document)) from exc
    except ValueError as exc:  # a validator outside a field (should not happen)
        raise ConfigError(document.problem((), str(exc))) from exc


META_MAX_BODY = "meshlet.io/max-request-body-bytes"
META_STREAM_IDLE = "meshlet.io/stream-idle-timeout"


def route_annotations(meta: Metadata, document: Document) -> tuple[int | None, float | None]:
    """meshlet's per-route extras, carried as annotations so the YAML stays valid Istio."""
    body: int | None = None
    idle: float | None = None
    path = ("metadata", "annotations")
    if META_MAX_BODY in meta.annotations:
        raw = meta.annotations[META_MAX_BODY]
        if not raw.isdigit():
            raise ConfigError(
                document.problem((*path, META_MAX_BODY), f"not a byte count: {raw!r}")
            )
        body = int(raw)
    if META_STREAM_IDLE in meta.annotations:
        try:
            idle = parse_duration(meta.annotations[META_STREAM_IDLE])
        except ValueError as exc:
            raise ConfigError(document.problem((*path, META_STREAM_IDLE), str(exc))) from exc
    return body, idle
