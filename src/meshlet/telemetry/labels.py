"""Istio's standard label set for the golden metrics, built at scrape time.

Labels that need peer metadata exchange (``*_app``, ``*_version``,
``*_cluster``) are not emitted; the peers' namespaces come from their SPIFFE
principals, so a request pays nothing for them: a series key holds only what
the request path knows, and its label text is built once, at its first scrape.
"""

from __future__ import annotations

from meshlet.telemetry.exposition import join_labels

UNKNOWN = "unknown"

# (reporter, source_principal, destination_principal, destination_service,
#  request_protocol, response_code, response_flags, mtls)
HttpKey = tuple[str, str, str, str, str, int, str, bool]
# (reporter, source_principal, destination_principal, destination_service, mtls)
TcpKey = tuple[str, str, str, str, bool]


def peer_labels(
    reporter: str, src: str, dst: str, workload: str, namespace: str
) -> list[tuple[str, str]]:
    """Who talked to whom; the local workload fills its own side."""
    src_ns = namespace_of(src)
    dst_ns = namespace_of(dst)
    src_wl = workload if reporter == "source" else UNKNOWN
    dst_wl = workload if reporter == "destination" else UNKNOWN
    if reporter == "source" and namespace != UNKNOWN:
        src_ns = namespace
    if reporter == "destination" and namespace != UNKNOWN:
        dst_ns = namespace
    return [
        ("reporter", reporter),
        ("source_workload", src_wl),
        ("source_workload_namespace", src_ns),
        ("source_principal", src or UNKNOWN),
        ("destination_workload", dst_wl),
        ("destination_workload_namespace", dst_ns),
        ("destination_principal", dst or UNKNOWN),
    ]


def http_labels(key: HttpKey, workload: str, namespace: str) -> str:
    """The rendered label text of one HTTP series."""
    reporter, src, dst, service, protocol, code, flags, mtls = key
    pairs = peer_labels(reporter, src, dst, workload, namespace)
    pairs += service_labels(service, dst)
    pairs += [
        ("request_protocol", protocol),
        ("response_code", str(code)),
        ("response_flags", flags),
        ("connection_security_policy", "mutual_tls" if mtls else "none"),
    ]
    return join_labels(pairs)


def tcp_labels(key: TcpKey, workload: str, namespace: str) -> str:
    """The rendered label text of one TCP series."""
    reporter, src, dst, service, mtls = key
    pairs = peer_labels(reporter, src, dst, workload, namespace)
    pairs += service_labels(service, dst)
    pairs += [
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls" if mtls else "none"),
    ]
    return join_labels(pairs)


def namespace_of(principal: str) -> str:
    """``spiffe://td/ns/<ns>/sa/<sa>`` -> ``<ns>``; anything else -> "unknown"."""
    marker = principal.find("/ns/")
    if marker < 0:
        return UNKNOWN
    rest = principal[marker + 4 :]
    end = rest.find("/")
    return (rest if end < 0 else rest[:end]) or UNKNOWN


def service_labels(service: str, dst_principal: str) -> list[tuple[str, str]]:
    """Istio's destination_service is an FQDN; name and namespace are its first
    two labels (``svc.ns.svc.cluster.local``), else the principal's namespace."""
    parts = service.split(".")
    name = parts[0] or UNKNOWN
    namespace = parts[1] if len(parts) > 1 and parts[1] else namespace_of(dst_principal)
    return [
        ("destination_service", service or UNKNOWN),
        ("destination_service_name", name),
        ("destination_service_namespace", namespace),
    ]
