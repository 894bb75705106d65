"""SPIFFE IDs, parsed and validated by the SPIFFE ID specification.

Spec: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md. The
rules enforced here, each with its section:

- §2: the scheme is ``spiffe`` (lowercase), followed by ``://``.
- §2.1: the trust domain is non-empty, only ``[a-z0-9.-_]`` (lowercase; no
  percent-encoding), and carries no port or userinfo (``:``/``@`` are not in the
  set, so they are refused by name).
- §2.2: the path is empty or ``/seg(/seg)*``, each segment non-empty, of
  ``[A-Za-z0-9.-_]``, and neither ``.`` nor ``..``; no trailing slash.
- §2.3: at most 2048 bytes in total, trust domain at most 255 bytes.
- §2: no query and no fragment.

meshlet's own workloads are ``spiffe://<trust-domain>/ns/<namespace>/sa/<sa>``
(Istio's shape, so Istio ``principals`` match unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshlet.errors import IdentityError

__all__ = [
    "CONTROL_PLANE_NAMESPACE",
    "CONTROL_PLANE_SERVICE_ACCOUNT",
    "MAX_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "SpiffeId",
    "validate_trust_domain",
]

MAX_ID_BYTES = 2048  # SPIFFE-ID.md §2.3
MAX_TRUST_DOMAIN_BYTES = 255  # SPIFFE-ID.md §2.3 (a DNS name's limit)
# The control plane's own identity, ``spiffe://<td>/ns/meshlet-system/sa/control``:
# the control plane presents it and every dynamic proxy pins it. It is defined
# here because those two sides may not import each other.
CONTROL_PLANE_NAMESPACE = "meshlet-system"  # Istio's istiod runs in istio-system
CONTROL_PLANE_SERVICE_ACCOUNT = "control"
_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if valid, else raise ``IdentityError`` saying why."""
    if not trust_domain:
        raise IdentityError("trust domain is empty")
    if len(trust_domain.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise IdentityError(
            f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes: {trust_domain[:40]!r}..."
        )
    if _TRUST_DOMAIN.fullmatch(trust_domain) is None:
        raise IdentityError(f"trust domain {trust_domain!r} {_why_bad_trust_domain(trust_domain)}")
    return trust_domain


def _why_bad_trust_domain(td: str) -> str:
    if "@" in td:
        return "contains userinfo ('@'); SPIFFE IDs carry none"
    if ":" in td:
        return "contains a port (':'); SPIFFE IDs carry none"
    if "%" in td:
        return "is percent-encoded; SPIFFE IDs may not be"
    if td.lower() != td:
        return "has uppercase letters; trust domains are lowercase"
    bad = sorted({c for c in td if _TRUST_DOMAIN.fullmatch(c) is None})
    return f"has characters outside [a-z0-9.-_]: {''.join(bad)!r}"


def _check_path(path: str) -> None:
    if not path:
        return
    if path.endswith("/"):
        raise IdentityError("path has a trailing '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise IdentityError("path has an empty segment ('//')")
        if segment in (".", ".."):
            raise IdentityError(f"path has a relative segment {segment!r}")
        if _SEGMENT.fullmatch(segment) is None:
            bad = sorted({c for c in segment if _SEGMENT.fullmatch(c) is None})
            if "%" in bad:
                raise IdentityError(f"path segment {segment!r} is percent-encoded")
            raise IdentityError(
                f"path segment {segment!r} has characters outside [A-Za-z0-9.-_]: {''.join(bad)!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SpiffeId:
    """A valid SPIFFE ID. Build it with ``parse`` or ``for_workload``; both validate."""

    trust_domain: str
    path: str  # "" (the trust domain itself) or "/seg/seg..."

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if self.path and not self.path.startswith("/"):
            raise IdentityError(f"path {self.path!r} must start with '/'")
        _check_path(self.path)
        if len(str(self).encode()) > MAX_ID_BYTES:
            raise IdentityError(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://trust-domain/path``; refuse anything the spec forbids."""
        if not isinstance(text, str):
            raise IdentityError(f"SPIFFE ID must be a string, got {type(text).__name__}")
        if not text:
            raise IdentityError("SPIFFE ID is empty")
        if len(text.encode()) > MAX_ID_BYTES:
            raise IdentityError(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise IdentityError(f"SPIFFE ID {text!r} has no scheme (must start with 'spiffe://')")
        if scheme != "spiffe":
            why = "must be lowercase 'spiffe'" if scheme.lower() == "spiffe" else "is not 'spiffe'"
            raise IdentityError(f"SPIFFE ID {text!r}: scheme {scheme!r} {why}")
        if "?" in rest:
            raise IdentityError(f"SPIFFE ID {text!r} has a query ('?'); none is allowed")
        if "#" in rest:
            raise IdentityError(f"SPIFFE ID {text!r} has a fragment ('#'); none is allowed")
        slash = rest.find("/")
        trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        try:
            return cls(trust_domain=trust_domain, path=path)
        except IdentityError as exc:
            raise IdentityError(f"SPIFFE ID {_short(text)}: {exc}") from None

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """``spiffe://<td>/ns/<namespace>/sa/<service_account>`` (Istio's shape)."""
        return cls(trust_domain=trust_domain, path=f"/ns/{namespace}/sa/{service_account}")

    @classmethod
    def control_plane(cls, trust_domain: str) -> SpiffeId:
        """What the control plane presents and proxies expect of it."""
        return cls.for_workload(
            trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT
        )

    @property
    def namespace(self) -> str | None:
        """The ``<ns>`` of ``/ns/<ns>/sa/<sa>``, or None for other shapes."""
        parts = self._workload_parts()
        return parts[0] if parts else None

    @property
    def service_account(self) -> str | None:
        """The ``<sa>`` of ``/ns/<ns>/sa/<sa>``, or None for other shapes."""
        parts = self._workload_parts()
        return parts[1] if parts else None

    def _workload_parts(self) -> tuple[str, str] | None:
        segments = self.path.split("/")
        if len(segments) == 5 and segments[1] == "ns" and segments[3] == "sa":
            return segments[2], segments[4]
        return None

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"


def _short(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")
