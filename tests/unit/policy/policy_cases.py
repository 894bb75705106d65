"""Shared builders for the policy tests: YAML in, compiled workload out."""

from __future__ import annotations

from typing import Any

from meshlet.config.istio_security import SecurityConfig, load_security_documents
from meshlet.config.source import parse_yaml
from meshlet.policy.attributes import RequestAttributes
from meshlet.policy.scope import Workload, WorkloadSecurity, compile_workload

SLEEP = "cluster.local/ns/foo/sa/sleep"
HTTPBIN = Workload(namespace="foo", labels={"app": "httpbin", "version": "v1"})


def load(text: str) -> SecurityConfig:
    return load_security_documents(parse_yaml(text, "policies.yaml"))


def compile_text(
    text: str, workload: Workload = HTTPBIN, root_namespace: str = "istio-system"
) -> WorkloadSecurity:
    return compile_workload(load(text), workload, root_namespace=root_namespace)


def request(**overrides: Any) -> RequestAttributes:
    """A typical in-mesh request from sleep to httpbin; tests change one thing."""
    base: dict[str, Any] = {
        "http": True,
        "method": "GET",
        "path": "/headers",
        "host": "httpbin.foo",
        "source_principal": SLEEP,
        "source_ip": "10.0.0.1",
        "destination_ip": "10.0.0.9",
        "destination_port": 8000,
    }
    base.update(overrides)
    return RequestAttributes(**base)


def policy(
    name: str,
    spec: str,
    namespace: str = "foo",
    kind: str = "AuthorizationPolicy",
    version: str = "v1",
) -> str:
    """One resource; ``spec`` is YAML indented by two spaces under ``spec:``."""
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (
        f"apiVersion: security.istio.io/{version}\nkind: {kind}\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n"
    )


def docs(*resources: str) -> str:
    return "---\n".join(resources)
