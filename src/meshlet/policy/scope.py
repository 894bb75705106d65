"""Which security resources apply to a workload, and the effective mTLS mode.

Istio scopes every security resource three ways: mesh-wide (in the root
namespace, ``istio-system`` unless configured), namespace-wide (no selector) and
workload (``selector.matchLabels``). Authorization and request authentication
policies *add up* across scopes (a root-namespace policy with a selector applies
to matching workloads in every namespace). PeerAuthentication instead has one
winner: the most specific policy, port-level settings over workload over
namespace over mesh, with ``UNSET`` inheriting from the next level out and
PERMISSIVE when nothing is set. Among several workload policies matching the
same workload the oldest wins (Istio's rule); ``analyze`` reports such conflicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshlet.config.istio_common import selector_matches
from meshlet.config.istio_security import (
    AuthorizationPolicy,
    MtlsMode,
    PeerAuthentication,
    RequestAuthentication,
    SecurityConfig,
)
from meshlet.policy.engine import CompiledPolicies

# Istio's default root namespace (meshConfig.rootNamespace).
DEFAULT_ROOT_NAMESPACE = "istio-system"
# Istio's default when no PeerAuthentication applies: accept both.
DEFAULT_MTLS_MODE = MtlsMode.PERMISSIVE


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """The identity of the workload whose inbound traffic is being decided."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"


def _applies(
    namespace: str, selector: tuple[tuple[str, str], ...] | None, workload: Workload, root: str
) -> bool:
    if namespace != workload.namespace and namespace != root:
        return False
    return selector_matches(selector, workload.labels)


def authorization_for(
    policies: Sequence[AuthorizationPolicy], workload: Workload, *, root_namespace: str
) -> tuple[AuthorizationPolicy, ...]:
    """The policies that apply to ``workload``: root namespace first, then its own
    namespace, each in name order, so reports are stable."""
    chosen = [p for p in policies if _applies(p.namespace, p.selector, workload, root_namespace)]
    return tuple(sorted(chosen, key=lambda p: (p.namespace != root_namespace, p.namespace, p.name)))


def request_authn_for(
    policies: Sequence[RequestAuthentication], workload: Workload, *, root_namespace: str
) -> tuple[RequestAuthentication, ...]:
    chosen = [p for p in policies if _applies(p.namespace, p.selector, workload, root_namespace)]
    return tuple(sorted(chosen, key=lambda p: (p.namespace != root_namespace, p.namespace, p.name)))


def _oldest(policies: Sequence[PeerAuthentication]) -> PeerAuthentication | None:
    if not policies:
        return None
    return min(
        policies,
        key=lambda p: (p.creation_timestamp is None, p.creation_timestamp or "", p.name),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MtlsResolution:
    """The effective mode and the policy (``ns/name``) that set it, if any."""

    mode: MtlsMode
    policy: str | None
    level: str  # "port", "workload", "namespace", "mesh" or "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerScopes:
    """The PeerAuthentications that could decide for one workload, by level."""

    workload: PeerAuthentication | None
    namespace: PeerAuthentication | None
    mesh: PeerAuthentication | None
    workload_conflicts: tuple[PeerAuthentication, ...] = ()

    def resolve(self, port: int | None = None) -> MtlsResolution:
        if self.workload is not None and port is not None:
            for p, mode in self.workload.port_modes:
                if p == port and mode is not MtlsMode.UNSET:
                    return MtlsResolution(mode=mode, policy=self.workload.ref, level="port")
        for level, policy in (
            ("workload", self.workload),
            ("namespace", self.namespace),
            ("mesh", self.mesh),
        ):
            if policy is not None and policy.mode is not MtlsMode.UNSET:
                return MtlsResolution(mode=policy.mode, policy=policy.ref, level=level)
        return MtlsResolution(mode=DEFAULT_MTLS_MODE, policy=None, level="default")


def peer_scopes_for(
    peers: Sequence[PeerAuthentication], workload: Workload, *, root_namespace: str
) -> PeerScopes:
    own = [p for p in peers if p.namespace == workload.namespace]
    selected = [p for p in own if p.selector and selector_matches(p.selector, workload.labels)]
    namespace_wide = [p for p in own if p.selector is None]
    mesh = [p for p in peers if p.namespace == root_namespace and p.selector is None]
    winner = _oldest(selected)
    return PeerScopes(
        workload=winner,
        namespace=_oldest(namespace_wide) if workload.namespace != root_namespace else None,
        mesh=_oldest(mesh),
        workload_conflicts=tuple(p for p in selected if p is not winner),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSecurity:
    """Everything security-related one sidecar needs, compiled."""

    workload: Workload
    authorization: CompiledPolicies
    request_authentications: tuple[RequestAuthentication, ...]
    peers: PeerScopes

    def mtls_mode(self, port: int | None = None) -> MtlsMode:
        return self.peers.resolve(port).mode


def compile_workload(
    config: SecurityConfig, workload: Workload, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> WorkloadSecurity:
    """Select and compile what applies to ``workload`` (off the hot path)."""
    return WorkloadSecurity(
        workload=workload,
        authorization=CompiledPolicies(
            authorization_for(
                config.authorization_policies, workload, root_namespace=root_namespace
            )
        ),
        request_authentications=request_authn_for(
            config.request_authentications, workload, root_namespace=root_namespace
        ),
        peers=peer_scopes_for(config.peer_authentications, workload, root_namespace=root_namespace),
    )
