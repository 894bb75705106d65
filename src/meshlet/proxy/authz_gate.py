"""``PolicyGate``, the sidecar's ``InboundGate``: mTLS mode, JWT authentication,
CUSTOM ext-authz, DENY/ALLOW authorization and audit records, in Istio's order.

This is the I/O shell around the pure ``meshlet.policy`` engine: it translates
the proxy's ``RequestInfo`` into ``RequestAttributes``, asks external authorizers
over HTTP (``authz_http``), lets ``authz_jwks`` keep remote JWT keys current, and
turns a ``Decision`` into a ``GateVerdict`` (403 ``RBAC: access denied``; 401 for
a bad JWT). The common case (no CUSTOM policy, JWKS already loaded) is decided
synchronously with no await on the hot path.

Ports: as in Istio, ``ports``, ``destination.port`` and ``portLevelMtls`` name
the *workload's* port, so the destination port the engine sees is the app's
port from the bootstrap (``inbound.app``), not the sidecar's listener port.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from meshlet.clock import Clock
from meshlet.config.istio_security import ExtAuthzProvider, MtlsMode
from meshlet.http1.events import Headers
from meshlet.policy.attributes import (
    Decision,
    RequestAttributes,
    normalize_path,
    strip_spiffe,
)
from meshlet.policy.engine import CustomMatch
from meshlet.policy.jwt import JwtAuthenticator, JwtResult
from meshlet.policy.scope import WorkloadSecurity
from meshlet.proxy.authz_http import ext_authz_call
from meshlet.proxy.authz_jwks import JwksKeys
from meshlet.proxy.hooks import GateVerdict, RequestInfo
from meshlet.telemetry.audit import AuditLog

logger = logging.getLogger(__name__)

DENIED_BODY = "RBAC: access denied"  # Envoy's RBAC filter body; clients and tests know it
JWT_FAILED_BODY = "Jwt verification fails"  # Envoy jwt_authn's 401 body
# Requests whose audit record waits for finish(); bounded in case a driver never calls it.
_MAX_PENDING_AUDIT = 10_000
_ALLOW = GateVerdict(allowed=True)


def _headers(raw: Headers, wanted: frozenset[bytes]) -> dict[str, tuple[str, ...]]:
    """The ``wanted`` headers (lowercase; the codec already lowercases names),
    decoded; the rest are never looked at."""
    out: dict[str, tuple[str, ...]] = {}
    if not wanted:
        return out
    for name, value in raw:
        if name in wanted:
            key = name.decode("latin-1")
            out[key] = (*out.get(key, ()), value.decode("latin-1"))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pending:
    decision: Decision | None
    reason: str
    request_principal: str | None


class PolicyGate:
    """One workload's inbound security, compiled once; swap a new gate to reload."""

    def __init__(
        self,
        *,
        security: WorkloadSecurity,
        authenticator: JwtAuthenticator | JwksKeys,
        providers: Mapping[str, ExtAuthzProvider],
        audit: AuditLog | None,
        clock: Clock,
        app_port: int,
        workload_name: str,
        # True: the gate opened ``audit`` and ``close`` closes it (static mode).
        # A process-owned log shared across gates (``build_gate(audit=...)``) is
        # closed by its owner, after the last gate has written to it.
        owns_audit: bool = True,
    ) -> None:
        self.security = security
        self.keys = (
            authenticator
            if isinstance(authenticator, JwksKeys)
            else JwksKeys(authenticator, extra_root_ca=None)
        )
        self.providers = dict(providers)
        self.audit = audit
        self._owns_audit = owns_audit
        self.clock = clock
        self.app_port = app_port
        self.workload_name = workload_name
        self._remote_keys = bool(self.keys.authenticator.jwks_uris)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._strict = security.mtls_mode(app_port) is MtlsMode.STRICT
        self._wanted_headers = frozenset(
            name.encode("latin-1")
            for name in (
                *security.authorization.header_names,
                *(h for r in self.authenticator.rules for h, _ in r.from_headers),
                *(["authorization"] if self.authenticator.rules else []),
                *(["cookie"] if any(r.from_cookies for r in self.authenticator.rules) else []),
            )
        )

    @property
    def authenticator(self) -> JwtAuthenticator:
        """The JWT rules with the keys loaded so far (swapped as keys arrive)."""
        return self.keys.authenticator

    @property
    def _refreshing(self) -> bool:
        """Whether a background key refresh runs (the name older tests poll)."""
        return self.keys.refreshing

    # -- the InboundGate protocol ----------------------------------------------

    def check(self, info: RequestInfo) -> GateVerdict | Awaitable[GateVerdict]:
        if self._strict and not info.mtls:
            return self._deny(info, None, "mTLS required (PeerAuthentication STRICT)", None)
        if self._remote_keys:
            if self.keys.first_fetch_pending:
                return self._check_after_jwks(info)  # first request: wait for the keys
            self.keys.maybe_refresh(self.clock)
        return self._check_now(info)

    def check_connection(self, info: RequestInfo) -> GateVerdict:
        if self._strict and not info.mtls:
            return self._deny(
                info, None, "mTLS required (PeerAuthentication STRICT)", None, record_now=True
            )
        attrs = self._attributes(info, http=False, headers={}, jwt=None)
        if self.security.authorization.match_custom(attrs) is not None:
            # an ext-authz HTTP check has no request to describe; fail closed
            return self._deny(
                info, None, "CUSTOM policy applies to TCP traffic", None, record_now=True
            )
        decision = self.security.authorization.evaluate(attrs)
        if not decision.allowed or decision.audit:
            self._record(info, decision, decision.reason, None, None)
        return (
            _ALLOW
            if decision.allowed
            else GateVerdict(allowed=False, status=403, reason=DENIED_BODY)
        )

    def finish(self, info: RequestInfo, verdict: GateVerdict, response_code: int) -> None:
        pending = self._pending.pop(id(info), None)
        if pending is not None:
            self._record(
                info, pending.decision, pending.reason, pending.request_principal, response_code
            )

    def close(self) -> None:
        if self.audit is not None and self._owns_audit:
            self.audit.close()

    def mtls_mode(self, port: int | None = None) -> MtlsMode:
        """The PeerAuthentication mode for the app's port (PERMISSIVE when none)."""
        return self.security.mtls_mode(self.app_port if port is None else port)

    # -- deciding ---------------------------------------------------------------

    def _attributes(
        self,
        info: RequestInfo,
        *,
        http: bool,
        headers: Mapping[str, tuple[str, ...]],
        jwt: JwtResult | None,
    ) -> RequestAttributes:
        return RequestAttributes(
            http=http,
            method=info.method,
            path=normalize_path(info.path) if http else "",
            host=info.host,
            headers=headers,
            source_principal=strip_spiffe(info.source_principal) if info.source_principal else None,
            source_ip=info.source_ip,
            destination_ip=info.destination_ip,
            destination_port=self.app_port,
            sni=info.sni,
            request_principal=jwt.principal if jwt else None,
            audiences=jwt.audiences if jwt else (),
            presenter=jwt.presenter if jwt else None,
            claims=jwt.claims if jwt else {},
        )

    def _authenticate(self, info: RequestInfo) -> tuple[dict[str, tuple[str, ...]], JwtResult]:
        headers = _headers(info.headers, self._wanted_headers)
        authenticator = self.keys.authenticator
        if not authenticator.rules:
            return headers, JwtResult(ok=True)
        query = info.path.split("?", 1)[1] if "?" in info.path else ""
        return headers, authenticator.authenticate(headers, query, now=self.clock.wall())

    def _check_now(self, info: RequestInfo) -> GateVerdict | Awaitable[GateVerdict]:
        headers, jwt = self._authenticate(info)
        if not jwt.ok:
            return self._deny(
                info, None, f"JWT: {jwt.reason}", None, status=401, body=JWT_FAILED_BODY
            )
        attrs = self._attributes(info, http=True, headers=headers, jwt=jwt)
        custom = self.security.authorization.match_custom(attrs)
        if custom is not None:
            return self._check_custom(info, attrs, jwt, custom)
        return self._decide(info, attrs, jwt, ())

    def _decide(
        self,
        info: RequestInfo,
        attrs: RequestAttributes,
        jwt: JwtResult,
        extra_headers: tuple[tuple[bytes, bytes], ...],
    ) -> GateVerdict:
        decision = self.security.authorization.evaluate(attrs)
        if not decision.allowed:
            return self._deny(info, decision, decision.reason, jwt.principal)
        if decision.audit:
            self._remember(info, decision, decision.reason, jwt.principal)
        if not jwt.set_headers and not jwt.remove_headers and not extra_headers:
            return _ALLOW
        return GateVerdict(
            allowed=True,
            set_headers=tuple((k.encode(), v.encode()) for k, v in jwt.set_headers) + extra_headers,
            remove_headers=tuple(h.encode() for h in jwt.remove_headers),
        )

    def _deny(
        self,
        info: RequestInfo,
        decision: Decision | None,
        reason: str,
        request_principal: str | None,
        *,
        status: int = 403,
        body: str = DENIED_BODY,
        record_now: bool = False,
    ) -> GateVerdict:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("request_denied", extra={"reason": reason, "request_id": info.request_id})
        if record_now:
            self._record(info, decision, reason, request_principal, None)
        else:
            self._remember(info, decision, reason, request_principal)
        return GateVerdict(allowed=False, status=status, reason=body)

    # -- CUSTOM (ext-authz over HTTP) --------------------------------------------

    async def _check_custom(
        self, info: RequestInfo, attrs: RequestAttributes, jwt: JwtResult, custom: CustomMatch
    ) -> GateVerdict:
        provider = self.providers.get(custom.provider)
        if provider is None:
            return self._deny(info, None, f"CUSTOM provider {custom.provider!r} unknown", None)
        try:
            status, headers = await asyncio.wait_for(
                ext_authz_call(provider, info), timeout=provider.timeout_s
            )
        except (OSError, TimeoutError, ValueError) as exc:
            if provider.fail_open:
                return self._decide(info, attrs, jwt, ())
            reason = f"ext-authz {provider.name} failed: {type(exc).__name__}"
            return self._deny(info, None, reason, jwt.principal, status=provider.status_on_error)
        if status != 200:
            reason = f"denied by CUSTOM policy {custom.policy} rule {custom.rule} ({status})"
            return self._deny(
                info, None, reason, jwt.principal, status=status if 400 <= status < 600 else 403
            )
        upstream = tuple(
            (k.encode(), v.encode())
            for k, v in headers
            if k in provider.headers_to_upstream_on_allow
        )
        return self._decide(info, attrs, jwt, upstream)

    # -- remote JWT keys ---------------------------------------------------------

    async def _check_after_jwks(self, info: RequestInfo) -> GateVerdict:
        await self.keys.fetch(self.clock, only_missing=True)
        verdict = self._check_now(info)
        return verdict if isinstance(verdict, GateVerdict) else await verdict

    # -- audit ----------------------------------------------------------------

    def _remember(
        self, info: RequestInfo, decision: Decision | None, reason: str, principal: str | None
    ) -> None:
        if self.audit is None:
            return
        self._pending[id(info)] = _Pending(
            decision=decision, reason=reason, request_principal=principal
        )
        if len(self._pending) > _MAX_PENDING_AUDIT:
            _, stale = self._pending.popitem(last=False)
            logger.warning("audit_finish_missing", extra={"reason": stale.reason})

    def _record(
        self,
        info: RequestInfo,
        decision: Decision | None,
        reason: str,
        request_principal: str | None,
        response_code: int | None,
    ) -> None:
        if self.audit is None:
            return
        denied = decision is None or not decision.allowed
        self.audit.record(
            {
                "request_id": info.request_id,
                "source_principal": info.source_principal,
                "source_ip": info.source_ip,
                "request_principal": request_principal,
                "destination_workload": self.workload_name,
                "method": info.method,
                "path": info.path.split("?", 1)[0],  # queries may carry tokens
                "decision": "DENY" if denied else "ALLOW",
                "policy": decision.policy if decision else None,
                "rule": decision.rule if decision else None,
                "audit_policy": decision.audit_policy if decision else None,
                "reason": reason,
                "response_code": response_code,
            }
        )
