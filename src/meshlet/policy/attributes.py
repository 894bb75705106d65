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


def strip_port(host: str) -> str:
    """``a.b:8000`` / ``a.b:*`` -> ``a.b``; ``[::1]:80`` -> ``[::1]``.

    The sidecar sees the Host without its port, so host matching is by name only:
    Istio's advice to write ``a.b:*`` next to ``a.b`` then still works, and a DENY
    written for ``a.b:*`` cannot be dodged by leaving the port out.
    """
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    if host.count(":") > 1:  # a bare IPv6 address has no port
        return host
    name, colon, port = host.rpartition(":")
    if colon and (port == "*" or port.isdigit()):
        return name
    return host


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(path: str) -> str:
    """The path policies match against: RFC 3986 normalization as Istio's default
    (``BASE``) does it. Percent-encoded unreserved characters are decoded (§2.3),
    other escapes (``%2F`` included) are kept with upper-case hex (§6.2.2.1), and
    ``.``/``..`` segments are removed (§5.2.4), so ``/public/%2e%2e/admin``
    matches rules about ``/admin``. The query is dropped."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "%" in path:
        out: list[str] = []
        i = 0
        while i < len(path):
            ch = path[i]
            if ch == "%" and _is_hex(path[i + 1 : i + 3]):
                decoded = chr(int(path[i + 1 : i + 3], 16))
                out.append(decoded if decoded in _UNRESERVED else "%" + path[i + 1 : i + 3].upper())
                i += 3
            else:
                out.append(ch)
                i += 1
        path = "".join(out)
    if "." in path:
        path = _remove_dot_segments(path)
    return path or "/"


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") or not path.startswith("/") else "/" + result


@dataclass(slots=True, kw_only=True)
class RequestAttributes:
    """One request (or, with ``http=False``, one opaque TCP connection).

    Not frozen, like the proxy's ``RequestInfo``: one is built per request on the
    hot path and a frozen dataclass's ``object.__setattr__`` per field costs more
    than the evaluation itself. Treat it as read-only.

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
