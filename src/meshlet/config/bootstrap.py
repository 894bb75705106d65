"""The sidecar's static bootstrap file: ``meshlet proxy --config proxy.yaml``.

Read once at start-up: YAML with line numbers -> a strict reader (unknown keys
are errors, so a misspelt security key is never ignored) -> frozen dataclasses
the proxy uses (``bootstrap_types``, re-exported here). Addresses are parsed
here and relative identity paths are resolved against the bootstrap file's
directory, so the proxy never sees a string it has to interpret again. Every key is documented in
docs/proxy.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from meshlet.config.bootstrap_types import (
    Address,
    AuditConfig,
    BootstrapConfig,
    EndpointConfig,
    IdentityFiles,
    InboundConfig,
    Limits,
    MtlsMode,
    OutboundConfig,
    ServiceConfig,
    Timeouts,
    WorkloadConfig,
    parse_address,
)
from meshlet.config.source import Document, PathKey, load_file
from meshlet.errors import ConfigError

__all__ = [
    "Address",
    "AuditConfig",
    "BootstrapConfig",
    "EndpointConfig",
    "IdentityFiles",
    "InboundConfig",
    "Limits",
    "MtlsMode",
    "OutboundConfig",
    "ServiceConfig",
    "Timeouts",
    "WorkloadConfig",
    "load_bootstrap",
    "parse_address",
    "parse_bootstrap",
]


# ---------------------------------------------------------------- reading (edge only)
#
# The bootstrap is read by a small strict reader instead of a pydantic model:
# pydantic costs the sidecar ~15 MiB of RSS and ~250 ms of start-up (import plus
# schema build), a third of the idle-RSS budget and more than the whole
# start-to-ready budget (issue #3: <= 30 MiB, <= 150 ms). The rules are the same:
# unknown keys are errors, every problem is reported at once as file:line.

_MISSING: Any = object()
_T = Timeouts()  # the documented defaults, read once
_L = Limits()


class _Reader:
    """Typed reads from one document, collecting problems instead of raising."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[str] = []

    def bad(self, path: PathKey, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def section(
        self, value: object, path: PathKey, *, keys: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.bad(path, f"must be a mapping, got {_shown(value)}")
            return None
        for key in value:
            if key not in keys:
                self.bad((*path, str(key)), "unknown field (not supported by meshlet)")
        for key in required:
            if key not in value:
                self.bad((*path, key), "field required")
        return value

    def text(self, m: dict[str, Any], key: str, path: PathKey, default: Any = _MISSING) -> Any:
        value = m.get(key, default)
        if value is _MISSING:
            return None  # reported as missing by section()
        if value is default:
            return value
        if not isinstance(value, str) or not value:
            self.bad((*path, key), f"must be a non-empty string, got {_shown(value)}")
            return None
        return value

    def address(self, m: dict[str, Any], key: str, path: PathKey) -> Address | None:
        value = m.get(key)
        if value is None:
            return None
        try:
            return parse_address(value)
        except ValueError as exc:
            self.bad((*path, key), str(exc))
            return None

    def choice(self, m: dict[str, Any], key: str, path: PathKey, options: tuple[str, ...]) -> str:
        value = m.get(key, options[0])
        if value not in options:
            listed = ", ".join(repr(o) for o in options)
            self.bad((*path, key), f"must be one of {listed}, got {_shown(value)}")
            return options[0]
        return str(value)

    def number(
        self, m: dict[str, Any], key: str, path: PathKey, default: float, *,
        low: float, high: float = float("inf"), integer: bool = False, open_low: bool = False,
    ) -> Any:  # fmt: skip
        value = m.get(key, default)
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if integer else "a number"
            self.bad((*path, key), f"must be {kind}, got {_shown(value)}")
            return default
        if value < low or (open_low and value == low) or value > high:
            lo = f"> {low}" if open_low else f">= {low}"
            rng = lo if high == float("inf") else f"{lo} and <= {high}"
            self.bad((*path, key), f"must be {rng}, got {value!r}")
            return default
        return value

    def strings(self, m: dict[str, Any], key: str, path: PathKey) -> tuple[str, ...]:
        value = m.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.bad((*path, key), f"must be a list of strings, got {_shown(value)}")
            return ()
        return tuple(value)

    def labels(self, m: dict[str, Any], key: str, path: PathKey) -> tuple[tuple[str, str], ...]:
        value = m.get(key, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.bad((*path, key), f"must be a mapping of strings to strings, got {_shown(value)}")
            return ()
        return tuple(sorted(value.items()))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _module_exists(name: str) -> bool:
    """Whether an optional engine is part of this build, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _read_inbound(r: _Reader, value: object, resolve: Any) -> InboundConfig | None:
    path: PathKey = ("inbound",)
    m = r.section(
        value,
        path,
        keys=("listen", "app", "mtls", "protocol", "policies"),
        required=("listen", "app"),
    )
    if m is None:
        return None
    listen, app = r.address(m, "listen", path), r.address(m, "app", path)
    # STRICT by default: secure unless the operator says otherwise (Istio's default
    # is PERMISSIVE for migration; a new mesh has nothing to migrate).
    mtls = r.choice(m, "mtls", path, ("STRICT", "PERMISSIVE", "DISABLE"))
    protocol = r.choice(m, "protocol", path, ("http", "tcp"))
    policies = r.strings(m, "policies", path)
    if policies and not _module_exists("meshlet.proxy.authz"):
        # Refused, never ignored: silently allowing traffic a policy meant to deny
        # is the worst failure a mesh can have.
        r.bad((*path, "policies"), "not supported in this build")
    if listen is None or app is None:
        return None
    return InboundConfig(
        listen=listen,
        app=app,
        mtls=MtlsMode(mtls),
        protocol=protocol,  # type: ignore[arg-type]
        policies=tuple(resolve(p) for p in policies),
    )


def _read_endpoint(r: _Reader, value: object, path: PathKey) -> EndpointConfig | None:
    m = r.section(
        value, path, keys=("address", "identity", "labels"), required=("address", "identity")
    )
    if m is None:
        return None
    address = r.address(m, "address", path)
    identity = r.text(m, "identity", path)
    if identity is not None and not (
        identity.startswith("spiffe://") and "/" in identity[len("spiffe://") :]
    ):
        r.bad(
            (*path, "identity"), f"must be a SPIFFE ID 'spiffe://<domain>/<path>', got {identity!r}"
        )
        identity = None
    labels = r.labels(m, "labels", path)
    if address is None or identity is None:
        return None
    return EndpointConfig(address=address, identity=identity, labels=labels)


def _read_service(r: _Reader, name: object, value: object) -> ServiceConfig | None:
    path: PathKey = ("outbound", "services", str(name))
    m = r.section(value, path, keys=("protocol", "endpoints", "listen"), required=("endpoints",))
    if m is None:
        return None
    protocol = r.choice(m, "protocol", path, ("http", "tcp"))
    listen = r.address(m, "listen", path)
    if protocol == "tcp" and "listen" not in m:
        r.bad(path, "a protocol: tcp service needs its own 'listen' address")
    if protocol == "http" and "listen" in m:
        r.bad((*path, "listen"), "only for protocol: tcp (http services share outbound.listen)")
    raw = m.get("endpoints")
    if not isinstance(raw, list) or not raw:
        if "endpoints" in m:
            r.bad((*path, "endpoints"), f"must be a non-empty list, got {_shown(raw)}")
        return None
    endpoints = [_read_endpoint(r, ep, (*path, "endpoints", i)) for i, ep in enumerate(raw)]
    if not isinstance(name, str) or not name or any(ep is None for ep in endpoints):
        return None
    return ServiceConfig(
        name=name,
        protocol=protocol,  # type: ignore[arg-type]
        endpoints=tuple(ep for ep in endpoints if ep is not None),
        listen=listen,
    )


def _read_outbound(r: _Reader, value: object, resolve: Any) -> OutboundConfig | None:
    path: PathKey = ("outbound",)
    m = r.section(value, path, keys=("listen", "services", "routing"), required=("listen",))
    if m is None:
        return None
    listen = r.address(m, "listen", path)
    raw = m.get("services", {})
    services: list[ServiceConfig | None] = []
    if isinstance(raw, dict):
        services = [_read_service(r, name, svc) for name, svc in raw.items()]
    else:
        r.bad((*path, "services"), f"must be a mapping of service names, got {_shown(raw)}")
    routing = r.strings(m, "routing", path)
    if routing and not _module_exists("meshlet.proxy.routing"):
        r.bad((*path, "routing"), "not supported in this build")
    if listen is None or any(s is None for s in services):
        return None
    return OutboundConfig(
        listen=listen,
        services=tuple(s for s in services if s is not None),
        routing=tuple(resolve(p) for p in routing),
    )


def _read_timeouts(r: _Reader, value: object) -> Timeouts:
    path: PathKey = ("timeouts",)
    keys = ("connect_s", "header_read_s", "idle_s", "upstream_response_s", "drain_s")
    m = r.section(value, path, keys=keys)
    if m is None:
        return _T
    kw = {k: r.number(m, k, path, getattr(_T, k), low=0.0, open_low=k != "drain_s") for k in keys}
    return Timeouts(**kw)


def _read_limits(r: _Reader, value: object) -> Limits:
    path: PathKey = ("limits",)
    m = r.section(value, path, keys=("max_header_bytes", "max_headers", "max_idle_per_endpoint"))
    if m is None:
        return _L
    return Limits(
        max_header_bytes=r.number(
            m,
            "max_header_bytes",
            path,
            _L.max_header_bytes,
            low=1024,
            high=1024 * 1024,
            integer=True,
        ),
        max_headers=r.number(
            m, "max_headers", path, _L.max_headers, low=1, high=10_000, integer=True
        ),
        max_idle_per_endpoint=r.number(
            m, "max_idle_per_endpoint", path, _L.max_idle_per_endpoint, low=0, integer=True
        ),
    )


def _read_workload(r: _Reader, value: object) -> WorkloadConfig:
    path: PathKey = ("workload",)
    m = r.section(value, path, keys=("name", "namespace", "service_account", "labels"))
    if m is None:
        return WorkloadConfig()
    return WorkloadConfig(
        name=r.text(m, "name", path, None),
        namespace=r.text(m, "namespace", path, None),
        service_account=r.text(m, "service_account", path, None),
        labels=r.labels(m, "labels", path),
    )


_TOP = (
    "identity",
    "admin",
    "inbound",
    "outbound",
    "workload",
    "timeouts",
    "limits",
    "audit",
    "access_log",
)


def parse_bootstrap(doc: Document) -> BootstrapConfig:
    """Check one document and convert it; every problem is reported at once."""
    r = _Reader(doc)
    top = r.section(doc.data, (), keys=_TOP, required=("identity",))
    if top is None:
        raise ConfigError(r.problems)
    base = (
        Path(doc.file).resolve().parent if doc.file and not doc.file.startswith("<") else Path.cwd()
    )

    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (base / p)

    ident = r.section(
        top.get("identity", {}),
        ("identity",),
        keys=("cert", "key", "bundle"),
        required=("cert", "key", "bundle"),
    )
    files = None
    if ident is not None:
        cert, key, bundle = (r.text(ident, k, ("identity",)) for k in ("cert", "key", "bundle"))
        if cert and key and bundle:
            files = IdentityFiles(cert=resolve(cert), key=resolve(key), bundle=resolve(bundle))
    admin = None
    if top.get("admin", "127.0.0.1:15000") is not None:  # admin: null turns it off
        admin = r.address({"admin": top.get("admin", "127.0.0.1:15000")}, "admin", ())
    inbound = _read_inbound(r, top["inbound"], resolve) if "inbound" in top else None
    outbound = _read_outbound(r, top["outbound"], resolve) if "outbound" in top else None
    if "inbound" not in top and "outbound" not in top:
        r.bad((), "at least one of 'inbound' and 'outbound' is required")
    if inbound and outbound and inbound.listen == outbound.listen and inbound.listen.port:
        r.bad(("outbound", "listen"), "same address as inbound.listen")
    workload = _read_workload(r, top.get("workload", {}))
    timeouts = _read_timeouts(r, top.get("timeouts", {}))
    limits = _read_limits(r, top.get("limits", {}))
    audit = access_log = None
    for key in ("audit", "access_log"):
        if key in top:
            m = r.section(top[key], (key,), keys=("path",), required=("path",))
            raw = r.text(m, "path", (key,)) if m is not None else None
            if raw is not None and key == "audit":
                audit = AuditConfig(path=resolve(raw))
            elif raw is not None:
                access_log = resolve(raw)
    if r.problems or files is None:
        raise ConfigError(r.problems)
    return BootstrapConfig(
        identity=files,
        admin=admin,
        inbound=inbound,
        outbound=outbound,
        workload=workload,
        timeouts=timeouts,
        limits=limits,
        audit=audit,
        access_log=access_log,
        source=doc.file,
    )


def load_bootstrap(path: str | Path) -> BootstrapConfig:
    """Read and check a bootstrap file; raise ConfigError with file:line lines."""
    documents = load_file(path)
    if len(documents) != 1:
        raise ConfigError(f"{path}: a bootstrap file holds exactly one YAML document")
    return parse_bootstrap(documents[0])
