"""Configuration for each sidecar pair, doing the same job (pure functions).

Every pair does what a meshlet pair does: the client-side sidecar takes plain
HTTP/1.1 from the load generator, opens (and keeps) TLS 1.3 connections to the
server-side sidecar presenting the client SVID, and checks that the server's
certificate chains to the bench CA and carries the server's SPIFFE URI SAN; the
server-side sidecar requires a client certificate from the same CA with the
client's SPIFFE URI SAN, and forwards plain HTTP to the app on loopback.

How each product checks the URI SAN:

- Envoy: ``match_typed_subject_alt_names`` with ``san_type: URI`` (exact) on both
  sides — the mechanism Istio itself generates.
- HAProxy 2.6 has no URI-SAN fetch, so the check is a byte match of the SPIFFE ID
  inside the verified peer certificate (``ssl_c_der`` / ``ssl_s_der``, hex),
  after ``verify required`` against the CA. The server side refuses before
  forwarding; the client side can only refuse the *response* (``ssl_s_*`` is
  read after the exchange), which is weaker, and the report says so.
- meshlet: ``outbound.services.*.endpoints[].identity`` pins the server's ID;
  inbound ``mtls: STRICT`` plus an AuthorizationPolicy that allows only the
  client's principal, so the server side refuses every other SVID of the bundle
  exactly as Envoy's SAN match does (and the policy engine's cost is counted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshlet.bench.certs import BenchCerts

_TLS = "envoy.transport_sockets.tls"
_TLS_V3 = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_HCM_V3 = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_V3 = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _local(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _tls_common(cert: Path, key: Path, bundle: Path, peer_id: str) -> dict[str, Any]:
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [
            {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(bundle)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_id}}],
        },
    }


def _hcm(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM_V3,
            "stat_prefix": stat_prefix,
            "codec_type": "HTTP1",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        # timeout 0: no route timeout, as meshlet's streams have none.
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": cluster, "timeout": "0s"},
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_V3}}
            ],
        },
    }


def _cluster(name: str, port: int, transport: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _local(port)}}]}],
        },
    }
    if transport is not None:
        cluster["transport_socket"] = transport
    return cluster


def _bootstrap(listener: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"address": _local(0)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def envoy_server_config(certs: BenchCerts, *, app_port: int) -> dict[str, Any]:
    """Inbound: TLS 1.3 with a required client SVID → plain HTTP to the app."""
    srv = certs.server
    tls = {
        "name": _TLS,
        "typed_config": {
            "@type": _TLS_V3 + "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _tls_common(
                srv.cert, srv.key, certs.bundle, certs.client.spiffe_id
            ),
        },
    }
    listener = {
        "name": "inbound",
        "address": _local(0),
        "filter_chains": [{"transport_socket": tls, "filters": [_hcm("inbound", "app")]}],
    }
    return _bootstrap(listener, _cluster("app", app_port))


def envoy_client_config(certs: BenchCerts, *, server_port: int) -> dict[str, Any]:
    """Outbound: plain HTTP in → pooled mTLS to the server sidecar."""
    cli = certs.client
    tls = {
        "name": _TLS,
        "typed_config": {
            "@type": _TLS_V3 + "UpstreamTlsContext",
            "common_tls_context": _tls_common(
                cli.cert, cli.key, certs.bundle, certs.server.spiffe_id
            ),
        },
    }
    listener = {
        "name": "outbound",
        "address": _local(0),
        "filter_chains": [{"filters": [_hcm("outbound", "server")]}],
    }
    return _bootstrap(listener, _cluster("server", server_port, tls))


def _haproxy_head(threads: int) -> str:
    return (
        "global\n"
        f"  nbthread {threads}\n"
        "  maxconn 4096\n"
        "defaults\n"
        "  mode http\n"
        "  option http-keep-alive\n"
        # Without it HAProxy coalesces small writes (MSG_MORE) and SSE tokens arrive
        # in bursts; an operator proxying token streams sets it, so the bench does.
        "  option http-no-delay\n"
        "  timeout connect 1s\n"
        "  timeout client 60s\n"
        "  timeout server 300s\n"
        "  timeout http-keep-alive 60s\n"
    )


def _hex(spiffe_id: str) -> str:
    return spiffe_id.encode("ascii").hex().upper()


def haproxy_server_config(certs: BenchCerts, *, listen_fd: int, app_port: int, threads: int) -> str:
    return _haproxy_head(threads) + (
        "frontend inbound\n"
        f"  bind fd@{listen_fd} ssl crt {certs.server.combined} ca-file {certs.bundle}"
        " verify required ssl-min-ver TLSv1.3\n"
        f"  http-request deny unless {{ ssl_c_der,hex -m sub {_hex(certs.client.spiffe_id)} }}\n"
        "  default_backend app\n"
        "backend app\n"
        f"  server app 127.0.0.1:{app_port}\n"
    )


def haproxy_client_config(
    certs: BenchCerts, *, listen_fd: int, server_port: int, threads: int
) -> str:
    return _haproxy_head(threads) + (
        "frontend outbound\n"
        f"  bind fd@{listen_fd}\n"
        "  default_backend server\n"
        "backend server\n"
        "  http-reuse always\n"
        f"  http-response deny unless {{ ssl_s_der,hex -m sub {_hex(certs.server.spiffe_id)} }}\n"
        f"  server s 127.0.0.1:{server_port} ssl verify required ca-file {certs.bundle}"
        f" crt {certs.client.combined} ssl-min-ver TLSv1.3\n"
    )


def meshlet_server_policy(certs: BenchCerts) -> dict[str, Any]:
    """An Istio AuthorizationPolicy letting only the bench client's identity in."""
    principal = certs.client.spiffe_id.removeprefix("spiffe://")  # Istio's principal form
    namespace = certs.server.spiffe_id.split("/ns/", 1)[1].split("/", 1)[0]
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "bench-client-only", "namespace": namespace},
        "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [principal]}}]}]},
    }


def meshlet_server_config(certs: BenchCerts, *, app_port: int, policy_file: Path) -> dict[str, Any]:
    """``policy_file`` holds ``meshlet_server_policy(certs)``; the caller writes it."""
    return {
        "identity": _meshlet_identity(certs.server.cert, certs.server.key, certs.bundle),
        "admin": "127.0.0.1:0",
        "inbound": {
            "listen": "127.0.0.1:0",
            "app": f"127.0.0.1:{app_port}",
            "mtls": "STRICT",
            "policies": [str(policy_file)],
        },
    }


def meshlet_client_config(certs: BenchCerts, *, server_port: int) -> dict[str, Any]:
    endpoint = {"address": f"127.0.0.1:{server_port}", "identity": certs.server.spiffe_id}
    return {
        "identity": _meshlet_identity(certs.client.cert, certs.client.key, certs.bundle),
        "admin": "127.0.0.1:0",
        "outbound": {"listen": "127.0.0.1:0", "services": {"upstream": {"endpoints": [endpoint]}}},
    }


def _meshlet_identity(cert: Path, key: Path, bundle: Path) -> dict[str, str]:
    return {"cert": str(cert), "key": str(key), "bundle": str(bundle)}
