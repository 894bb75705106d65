"""The sidecar's ``InboundGate``: mTLS mode, JWT authentication, CUSTOM ext-authz,
DENY/ALLOW authorization and audit records, in Istio's order.

This is the I/O shell around the pure ``meshlet.policy`` engine: it translates
the proxy's ``RequestInfo`` into ``RequestAttributes``, fetches JWKS documents
(``jwksUri``) and asks external authorizers over HTTP, and turns a ``Decision``
into a ``GateVerdict`` (403 ``RBAC: access denied``; 401 for a bad JWT). The
common case (no CUSTOM policy, JWKS already loaded) is decided synchronously
with no await on the hot path.

Ports: as in Istio, ``ports``, ``destination.port`` and ``portLevelMtls`` name
the *workload's* port, so the destination port the engine sees is the app's
port from the bootstrap (``inbound.app``), not the sidecar's listener port.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from meshlet.clock import Clock
from meshlet.config.istio_security import (
    ExtAuthzProvider,
    JwtRule,
    MtlsMode,
    load_security_paths,
)
from meshlet.errors import ConfigError
from meshlet.http1.events import Headers
from meshlet.policy.attributes import (
    Decision,
    RequestAttributes,
    normalize_path,
    strip_spiffe,
)
from meshlet.policy.engine import CustomMatch
from meshlet.policy.jwt import JwtAuthenticator, JwtResult
from meshlet.policy.scope import (
    DEFAULT_ROOT_NAMESPACE,
    Workload,
    WorkloadSecurity,
    compile_workload,
)
from meshlet.proxy.hooks import GateVerdict, RequestInfo
from meshlet.telemetry.audit import AuditLog

if TYPE_CHECKING:
    from meshlet.config.bootstrap import BootstrapConfig

logger = logging.getLogger(__name__)

DENIED_BODY = "RBAC: access denied"  # Envoy's RBAC filter body; clients and tests know it
JWT_FAILED_BODY = "Jwt verification fails"  # Envoy jwt_authn's 401 body
# Istio refreshes jwksUri keys every 20 minutes (PILOT_JWT_PUB_KEY_REFRESH_INTERVAL).
JWKS_REFRESH_S = 20 * 60.0
# After a failed fetch (keys kept, or none yet: tokens of that issuer get 401).
JWKS_RETRY_S = 30.0
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
        authenticator: JwtAuthenticator,
        providers: Mapping[str, ExtAuthzProvider],
        audit: AuditLog | None,
        clock: Clock,
        app_port: int,
        workload_name: str,
    ) -> None:
        self.security = security
        self.authenticator = authenticator
        self.providers = dict(providers)
        self.audit = audit
        self.clock = clock
        self.app_port = app_port
        self.workload_name = workload_name
        self._jwks_fetched: dict[str, float] = {}
        self._jwks_lock: asyncio.Lock | None = None
        self._refreshing = False
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._strict = security.mtls_mode(app_port) is MtlsMode.STRICT
        self._wanted_headers = frozenset(
            name.encode("latin-1")
            for name in (
                *security.authorization.header_names,
                *(h for r in authenticator.rules for h, _ in r.from_headers),
                *(["authorization"] if authenticator.rules else []),
            )
        )

    # -- the InboundGate protocol ----------------------------------------------

    def check(self, info: RequestInfo) -> GateVerdict | Awaitable[GateVerdict]:
        if self._strict and not info.mtls:
            return self._deny(info, None, "mTLS required (PeerAuthentication STRICT)", None)
        if self.authenticator.jwks_uris:
            if len(self._jwks_fetched) < len(self.authenticator.jwks_uris):
                return self._check_after_jwks(info)  # first request: wait for the keys
            self._maybe_refresh_jwks()
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
        if self.audit is not None:
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
        if not self.authenticator.rules:
            return headers, JwtResult(ok=True)
        query = info.path.split("?", 1)[1] if "?" in info.path else ""
        return headers, self.authenticator.authenticate(headers, query, now=self.clock.wall())

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
                _ext_authz_call(provider, info), timeout=provider.timeout_s
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

    # -- JWKS over HTTP(S) -------------------------------------------------------

    async def _check_after_jwks(self, info: RequestInfo) -> GateVerdict:
        await self._fetch_jwks(only_missing=True)
        verdict = self._check_now(info)
        return verdict if isinstance(verdict, GateVerdict) else await verdict

    def _maybe_refresh_jwks(self) -> None:
        if self._refreshing or not self._jwks_fetched:
            return
        now = self.clock.monotonic()
        if all(now - t < JWKS_REFRESH_S for t in self._jwks_fetched.values()):
            return
        self._refreshing = True
        task = asyncio.get_running_loop().create_task(self._fetch_jwks(only_missing=False))
        task.add_done_callback(lambda _t: setattr(self, "_refreshing", False))

    async def _fetch_jwks(self, *, only_missing: bool) -> None:
        if self._jwks_lock is None:
            self._jwks_lock = asyncio.Lock()
        async with self._jwks_lock:
            for uri in self.authenticator.jwks_uris:
                if only_missing and uri in self._jwks_fetched:
                    continue
                rule_timeout = max(
                    r.timeout_s for r in self.authenticator.rules if r.jwks_uri == uri
                )
                now = self.clock.monotonic()
                try:
                    text = await asyncio.wait_for(_http_get(uri), timeout=rule_timeout)
                    self.authenticator = self.authenticator.with_jwks(uri, text)
                    logger.info("jwks_loaded", extra={"uri": uri})
                    self._jwks_fetched[uri] = now
                except (OSError, TimeoutError, ValueError, ConfigError) as exc:
                    logger.warning("jwks_fetch_failed", extra={"uri": uri, "error": str(exc)})
                    # retried by a background refresh soon, never per request
                    self._jwks_fetched[uri] = now - JWKS_REFRESH_S + JWKS_RETRY_S

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


# ------------------------------------------------------------- tiny HTTP client


async def _request(
    host: str, port: int, head: bytes, *, want_body: bool
) -> tuple[int, list[tuple[str, str]], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        await writer.drain()
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        body = b""
        if want_body:
            length = next((v for k, v in headers if k == "content-length"), None)
            body = await (reader.readexactly(int(length)) if length else reader.read())
        return int(parts[1]), headers, body
    finally:
        writer.close()


async def _ext_authz_call(
    provider: ExtAuthzProvider, info: RequestInfo
) -> tuple[int, list[tuple[str, str]]]:
    """Envoy's HTTP ext-authz shape: the original method and path (after
    ``pathPrefix``), the allowed headers, no body; 200 allows."""
    lines = [
        f"{info.method} {provider.path_prefix}{info.path} HTTP/1.1",
        f"host: {info.host or provider.host}",
        "content-length: 0",
        "connection: close",
    ]
    allowed = set(provider.include_request_headers)
    for name, value in info.headers:
        key = name.decode("latin-1").lower()
        if key in allowed:
            lines.append(f"{key}: {value.decode('latin-1')}")
    if info.source_principal:
        lines.append(f"x-forwarded-client-cert: URI={info.source_principal}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    status, headers, _ = await _request(provider.host, provider.port, head, want_body=False)
    return status, headers


async def _http_get(uri: str) -> str:
    """GET a JWKS document (plain http only: https JWKS needs a trust store the
    sidecar does not have yet, so it is refused at build time)."""
    parts = urlsplit(uri)
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    head = (
        f"GET {path} HTTP/1.1\r\nhost: {parts.netloc}\r\naccept: application/json\r\n"
        "connection: close\r\n\r\n"
    ).encode("latin-1")
    status, _, body = await _request(parts.hostname or "", port, head, want_body=True)
    if status != 200:
        raise ValueError(f"JWKS fetch answered {status}")
    return body.decode("utf-8")


# ------------------------------------------------------------------ building


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
        elif rule.jwks_uri and rule.jwks_uri.startswith("https://"):
            raise ConfigError(
                f"jwksUri {rule.jwks_uri}: https JWKS fetch is not supported yet; "
                "use jwks (inline), file:// or http:// on a trusted network"
            )
    return texts


def build_gate(
    config: BootstrapConfig, *, clock: Clock, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> PolicyGate | None:
    """The gate for ``config.inbound.policies`` (None when there are none)."""
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
    authenticator = JwtAuthenticator(rules, file_texts)
    audit = AuditLog(config.audit.path, clock=clock) if config.audit is not None else None
    gate = PolicyGate(
        security=security,
        authenticator=authenticator,
        providers=providers,
        audit=audit,
        clock=clock,
        app_port=config.inbound.app.port,
        workload_name=name,
    )
    for uri in file_texts:
        gate._jwks_fetched[uri] = float("inf")  # loaded from disk; never refetched
    logger.info(
        "policy_gate_built",
        extra={
            "policies": len(security.authorization.policies),
            "workload": name,
            "mtls": gate.mtls_mode().value,
        },
    )
    return gate
