"""The Kubernetes resource envelope shared by every Istio-style loader.

Istio (and Gateway API) documents all look alike on the outside: ``apiVersion``,
``kind``, ``metadata`` and ``spec``. This module checks that envelope once and
hands loaders a ``Resource`` whose ``problem`` method reports errors located in
the original file (``file:line: spec.rules[0].from: ...``), so each loader only
deals with its own ``spec``.

The envelope is strict at the top level (an unknown top-level key is a typo or a
field meshlet does not implement) but lenient inside ``metadata``: kubectl
output carries ``uid``, ``managedFields`` and friends, none of which change
behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshlet.config.source import Document
from meshlet.errors import ConfigError

# Kubernetes' own default when a manifest names no namespace (kubectl applies
# it to the current context's namespace, "default" unless configured).
DEFAULT_NAMESPACE = "default"

_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
# RFC 1123 label: what Kubernetes accepts for names and namespaces.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """One Kubernetes-style object, envelope checked, spec still raw data."""

    group: str  # "security.istio.io"; "" for the core group ("v1")
    version: str  # "v1beta1"
    kind: str
    name: str
    namespace: str
    labels: Mapping[str, str]
    creation_timestamp: str | None  # ordering tie-break Istio uses for conflicts
    spec: Any
    document: Document = field(compare=False, repr=False)

    @property
    def ref(self) -> str:
        """``namespace/name``: how policies and decisions name this object."""
        return f"{self.namespace}/{self.name}"

    def problem(self, path: Sequence[str | int], message: str) -> str:
        """An error line about ``path`` inside this object (path from the root:
        ``("spec", "rules", 0)``), naming the document index in its file."""
        line = self.document.problem(path, message)
        where, _, rest = line.partition(": ")
        return f"{where}: {self.kind} {self.ref} (document {self.document.index}): {rest}"


def api_group_version(api_version: str) -> tuple[str, str]:
    """``security.istio.io/v1`` -> (``security.istio.io``, ``v1``); ``v1`` -> ("", "v1")."""
    group, slash, version = api_version.rpartition("/")
    return (group, version) if slash else ("", api_version)


def parse_resource(document: Document) -> Resource:
    """Check the envelope of ``document`` and return it as a Resource.

    Raises ConfigError listing every envelope problem at once.
    """
    data = document.data
    if not isinstance(data, Mapping):
        raise ConfigError(document.problem((), "a resource must be a mapping"))
    problems: list[str] = []
    for key in data:
        if key not in _TOP_LEVEL:
            problems.append(document.problem((str(key),), "unknown field (not supported)"))
    api_version = data.get("apiVersion")
    kind = data.get("kind")
    if not isinstance(api_version, str) or not api_version:
        problems.append(document.problem(("apiVersion",), "required string"))
    if not isinstance(kind, str) or not kind:
        problems.append(document.problem(("kind",), "required string"))
    metadata = data.get("metadata", {})
    if not isinstance(metadata, Mapping):
        problems.append(document.problem(("metadata",), "must be a mapping"))
        metadata = {}
    name = metadata.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
        problems.append(document.problem(("metadata", "name"), f"required DNS name, got {name!r}"))
    namespace = metadata.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        problems.append(
            document.problem(("metadata", "namespace"), f"must be a DNS label, got {namespace!r}")
        )
    labels = metadata.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        problems.append(document.problem(("metadata", "labels"), "must map strings to strings"))
        labels = {}
    created = metadata.get("creationTimestamp")
    if problems:
        raise ConfigError(problems)
    assert isinstance(api_version, str)
    assert isinstance(kind, str)
    assert isinstance(name, str)
    group, version = api_group_version(api_version)
    return Resource(
        group=group,
        version=version,
        kind=kind,
        name=name,
        namespace=str(namespace),
        labels=dict(labels),
        creation_timestamp=str(created) if created is not None else None,
        spec=data.get("spec") if data.get("spec") is not None else {},
        document=document,
    )


def selector_labels(
    resource: Resource, raw: object, path: Sequence[str | int]
) -> tuple[tuple[str, str], ...] | None:
    """A workload selector (``{matchLabels: {...}}``) as sorted pairs; None when
    absent or empty (Istio: no selector means every workload in scope)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"matchLabels"}:
        raise ConfigError(resource.problem(path, "only selector.matchLabels is supported"))
    match = raw.get("matchLabels") or {}
    if not isinstance(match, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in match.items()
    ):
        raise ConfigError(
            resource.problem((*path, "matchLabels"), "must map label names to strings")
        )
    return tuple(sorted(match.items())) or None


def selector_matches(
    selector: tuple[tuple[str, str], ...] | None, labels: Mapping[str, str]
) -> bool:
    """Kubernetes matchLabels: every selector pair is present in ``labels``."""
    return selector is None or all(labels.get(k) == v for k, v in selector)
