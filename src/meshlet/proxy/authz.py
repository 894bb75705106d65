"""Building the sidecar's policy gate from its bootstrap: load the security
YAML, compile it for this workload, read ``file://`` JWKS, and hand the result to
``PolicyGate`` (``authz_gate``).

This module is the entry point the proxy imports lazily (only when
``inbound.policies`` is set), so a sidecar without policies never loads the
policy engine, PyJWT or cryptography.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from meshlet.clock import Clock
from meshlet.config.istio_security import JwtRule, load_security_paths
from meshlet.errors import ConfigError
from meshlet.policy.jwt import JwtAuthenticator
from meshlet.policy.scope import DEFAULT_ROOT_NAMESPACE, Workload, compile_workload
from meshlet.proxy.authz_gate import DENIED_BODY, JWT_FAILED_BODY, PolicyGate
from meshlet.proxy.authz_jwks import JWKS_REFRESH_S, JWKS_RETRY_S, JwksKeys
from meshlet.telemetry.audit import AuditLog

if TYPE_CHECKING:
    from meshlet.config.bootstrap import BootstrapConfig

__all__ = [
    "DENIED_BODY",
    "JWKS_REFRESH_S",
    "JWKS_RETRY_S",
    "JWT_FAILED_BODY",
    "PolicyGate",
    "build_gate",
]

logger = logging.getLogger(__name__)


def _workload(config: BootstrapConfig) -> tuple[Workload, str]:
    w = config.workload
    namespace, account = w.namespace, w.service_account
    if namespace is None or account is None:
        spiffe = _spiffe_from_cert(config.identity.cert)
        parts = spiffe.split("/") if spiffe else []
        if namespace is None and "ns" in parts[:-1]:
            namespace = parts[parts.index("ns") + 1]
        if account is None and "sa" in parts[:-1]:
            account = parts[parts.index("sa") + 1]
    workload = Workload(
        namespace=namespace or "default",
        labels=dict(w.labels),
        service_account=account or "default",
    )
    return workload, f"{workload.namespace}/{w.name or workload.service_account}"


def _spiffe_from_cert(path: Path) -> str | None:
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return uris[0] if uris else None


def _file_jwks(authenticator_rules: Sequence[JwtRule]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for rule in authenticator_rules:
        if rule.jwks_uri and rule.jwks_uri.startswith("file://"):
            path = Path(urlsplit(rule.jwks_uri).path)
            try:
                texts[rule.jwks_uri] = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"jwksUri {rule.jwks_uri}: cannot read: {exc}") from exc
    return texts


def build_gate(
    config: BootstrapConfig,
    *,
    clock: Clock,
    audit: AuditLog | None = None,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> PolicyGate | None:
    """The gate for ``config.inbound.policies`` (None when there are none).

    ``audit`` is a log the caller owns and shares across the gates it builds
    (a dynamic sidecar rebuilds its gate per policy push, and a second writer
    on one path would start a second hash chain); the gate writes to it and
    leaves closing it to the caller. Without one, the gate opens
    ``config.audit``'s path itself, if any, and closes it (static mode)."""
    if config.inbound is None or not config.inbound.policies:
        return None
    security_config = load_security_paths([str(p) for p in config.inbound.policies])
    workload, name = _workload(config)
    security = compile_workload(security_config, workload, root_namespace=root_namespace)
    providers = {p.name: p for p in security_config.providers}
    unknown = sorted(
        {
            p.provider
            for p in security.authorization.policies
            if p.provider and p.provider not in providers
        }
    )
    if unknown:
        raise ConfigError(
            f"CUSTOM policies name unknown providers: {', '.join(unknown)} "
            "(declare a meshlet.dev/v1alpha1 ExtensionProvider)"
        )
    rules = [r for ra in security.request_authentications for r in ra.jwt_rules]
    file_texts = _file_jwks(rules)
    keys = JwksKeys(
        JwtAuthenticator(rules, file_texts),
        extra_root_ca=security_config.jwks_extra_root_ca,
        preloaded=file_texts,
    )
    owns_audit = audit is None
    if audit is None and config.audit is not None:
        audit = AuditLog(config.audit.path, clock=clock)
    gate = PolicyGate(
        security=security,
        authenticator=keys,
        providers=providers,
        audit=audit,
        owns_audit=owns_audit,
        clock=clock,
        app_port=config.inbound.app.port,
        workload_name=name,
    )
    logger.info(
        "policy_gate_built",
        extra={
            "policies": len(security.authorization.policies),
            "workload": name,
            "mtls": gate.mtls_mode().value,
        },
    )
    return gate
