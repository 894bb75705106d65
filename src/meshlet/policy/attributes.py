"""What the policy engine knows about one request, and the verdict it returns.

The proxy translates its own request shape into ``RequestAttributes`` once per
request; the engine never sees bytes, sockets or the HTTP codec. Names follow
Istio's attribute vocabulary (``source.principal``, ``request.auth.claims``)
because that is what users write in ``when`` conditions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_SPIFFE = "spiffe://"


def strip_spiffe(identity: str) -> str:
    """Istio writes principals without the scheme: ``cluster.local/ns/foo/sa/bar``."""
    return identity[len(_SPIFFE) :] if identity.startswith(_SPIFFE) else identity


def namespace_of(principal: str | None) -> str | None:
    """The namespace inside a ``<td>/ns/<ns>/sa/<sa>`` principal, or None."""
    if not principal:
        return None
    parts = principal.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "ns":
            return parts[i + 1]
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAttributes:
    """One request (or, with ``http=False``, one opaque TCP connection).

    ``source_principal`` is the peer's identity from its verified client
    certificate (None without mTLS); ``request_principal`` is ``iss/sub`` of a
    verified JWT (None without one). ``headers`` keys are lowercase. ``path`` has
    no query string. ``remote_ip`` is the original client (from a trusted
    X-Forwarded-For or PROXY header); None means the same as ``source_ip``.
    """

    http: bool = True
    method: str = ""
    path: str = ""
    host: str = ""
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY)
    source_principal: str | None = None
    source_ip: str | None = None
    remote_ip: str | None = None
    destination_ip: str | None = None
    destination_port: int = 0
    sni: str | None = None
    request_principal: str | None = None
    audiences: tuple[str, ...] = ()
    presenter: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    # Only for tools (``policy explain --source-namespace``) that have a
    # namespace but no principal; the proxy always derives it from the principal.
    namespace_override: str | None = None

    @property
    def source_namespace(self) -> str | None:
        if self.namespace_override is not None:
            return self.namespace_override
        return namespace_of(self.source_principal)

    @property
    def effective_remote_ip(self) -> str | None:
        return self.remote_ip if self.remote_ip is not None else self.source_ip


class Verdict(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The engine's answer: what to do and why.

    ``policy`` is ``namespace/name`` of the policy that decided (None when no
    policy did: the default allow, or "ALLOW policies exist but none matched"),
    ``rule`` the index of its matching rule. ``audit`` is true when an AUDIT
    policy matched (``audit_policy`` names the first one).
    """

    action: Verdict
    policy: str | None
    rule: int | None
    audit: bool
    reason: str
    audit_policy: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action is Verdict.ALLOW

    def with_audit(self, audit_policy: str) -> Decision:
        return Decision(
            action=self.action,
            policy=self.policy,
            rule=self.rule,
            audit=True,
            reason=self.reason,
            audit_policy=audit_policy,
        )
