"""The Gateway API Inference Extension documents that many traffic and proxy
tests route through: an HTTPRoute on Service ``inference`` sending to
InferencePool ``llm-pool``, and the InferenceModels a test names. One builder,
so a change to those kinds' shape is made once."""

from __future__ import annotations

_ROUTE_AND_POOL = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: llm, namespace: ml}
spec:
  parentRefs: [{group: "", kind: Service, name: inference}]
  rules:
  - backendRefs: [{name: llm-pool, group: inference.networking.k8s.io, kind: InferencePool}]
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: llm-pool%s}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}}
"""


def inference_model(name: str, criticality: str, *, targets: str | None = None) -> str:
    """One InferenceModel of ``llm-pool``; ``targets`` is a YAML flow list of
    ``targetModels`` (e.g. ``[{name: chat-v1, weight: 100}]``)."""
    extra = "" if targets is None else f"\n  targetModels: {targets}"
    return (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\n"
        "kind: InferenceModel\n"
        f"metadata: {{name: {name}}}\n"
        f"spec:\n  modelName: {name}\n  criticality: {criticality}\n"
        f"  poolRef: {{name: llm-pool}}{extra}\n"
    )


def pool_routing(*models: str, max_concurrency_per_endpoint: int | None = None) -> str:
    """The route and pool, then ``models`` (from ``inference_model``)."""
    annotations = (
        ""
        if max_concurrency_per_endpoint is None
        else ", annotations: {meshlet.io/max-concurrency-per-endpoint: "
        f'"{max_concurrency_per_endpoint}"}}'
    )
    return "---\n".join([_ROUTE_AND_POOL % annotations, *models])
