"""Fixtures for control-plane tests: a test CA, a config directory, the test app,
an in-process ControlServer, and control-plane client helpers. Real ``meshlet``
processes and polling are in ``tests.support``."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.proxy_app import start_app

from meshlet.control.server import ControlServer
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.proxy.control_client import ControlClient

TD = "example.org"
ECHO_ID = f"spiffe://{TD}/ns/default/sa/echo"
FRONTEND_ID = f"spiffe://{TD}/ns/default/sa/frontend"


def mesh_yaml(app_port: int) -> str:
    return textwrap.dedent(
        f"""\
        trust_domain: {TD}
        services:
          echo:
            workloads:
              - command: ["true"]
                port: {app_port}
                labels: {{app: echo}}
        clients:
          frontend:
            command: ["true"]
            labels: {{app: frontend}}
        """
    )


def deny_frontend(action: str = "DENY") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: no-frontend, namespace: default}}
        spec:
          selector: {{matchLabels: {{app: echo}}}}
          action: {action}
          rules:
            - from: [{{source: {{principals: ["{TD}/ns/default/sa/frontend"]}}}}]
        """
    )


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", TD, now=time.time())


@dataclass
class App:
    port: int
    server: asyncio.Server


@pytest.fixture
async def app() -> AsyncIterator[App]:
    server, _stats, port = await start_app()
    yield App(port=port, server=server)
    server.close()


@pytest.fixture
def config_dir(tmp_path: Path, app: App) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "mesh.yaml").write_text(mesh_yaml(app.port))
    return directory


@pytest.fixture
async def control(config_dir: Path, ca: CertificateAuthority) -> AsyncIterator[ControlServer]:
    server = ControlServer(config_dir=config_dir, ca=ca, hold_s=2.0, poll_s=0.2, resync_grace_s=0.0)
    await server.start(socket.create_server(("127.0.0.1", 0)))
    yield server
    await server.close()


def control_url(server: ControlServer) -> str:
    address = server.address
    assert address is not None
    return f"https://{address[0]}:{address[1]}"


def api_client(
    server: ControlServer, ca: CertificateAuthority, cert: tuple[Path, Path] | None = None
) -> ControlClient:
    return ControlClient(
        url=control_url(server),
        bundle_pem=ca.bundle_pem(),
        control_id=str(SpiffeId.control_plane(TD)),
        cert=cert,
    )


def issue_files(ca: CertificateAuthority, spiffe_id: str, out: Path) -> tuple[Path, Path]:
    ca.issue(SpiffeId.parse(spiffe_id), now=time.time(), ttl_s=3600).write(out)
    return out / "cert.pem", out / "key.pem"
