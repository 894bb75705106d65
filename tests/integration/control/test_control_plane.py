"""The control plane over real TLS on loopback: identity, watch, push, refusals."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.integration.control.conftest import (
    ECHO_ID,
    FRONTEND_ID,
    TD,
    App,
    api_client,
    control_url,
    deny_frontend,
    issue_files,
)
from tests.support.waiting import eventually

from meshlet.config.bootstrap import Address
from meshlet.control.server import ControlServer
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.x509 import load_pem_certificates, make_csr, spiffe_id_from_cert
from meshlet.proxy.dynamic import DynamicProxy
from meshlet.proxy.dynamic_config import DynamicSettings

pytestmark = pytest.mark.integration

ANY = Address(host="127.0.0.1", port=0)


async def test_join_token_bootstrap_and_replayed_token_refused(
    control: ControlServer, ca: CertificateAuthority
) -> None:
    token = ca.issue_join_token(SpiffeId.parse(FRONTEND_ID), now=time.time())
    client = api_client(control, ca)
    csr, _key = make_csr(SpiffeId.parse(FRONTEND_ID))
    status, body = await client.call("POST", "/v1/identity", {"csr": csr.decode(), "token": token})
    assert status == 200, body
    answer = json.loads(body)
    leaf = load_pem_certificates(answer["cert_chain"].encode())[0]
    assert str(spiffe_id_from_cert(leaf)) == FRONTEND_ID
    assert answer["bundle"].encode() == ca.bundle_pem()

    csr2, _ = make_csr(SpiffeId.parse(FRONTEND_ID))
    status, body = await client.call("POST", "/v1/identity", {"csr": csr2.decode(), "token": token})
    assert status == 403
    assert "already used" in json.loads(body)["error"]

    status, body = await client.call("POST", "/v1/identity", {"csr": csr2.decode()})
    assert status == 401  # neither a token nor a client certificate
    client.reset()


async def test_csr_for_another_identity_is_refused(
    control: ControlServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    token = ca.issue_join_token(SpiffeId.parse(FRONTEND_ID), now=time.time())
    anon = api_client(control, ca)
    other, _ = make_csr(SpiffeId.parse(ECHO_ID))
    status, body = await anon.call("POST", "/v1/identity", {"csr": other.decode(), "token": token})
    assert status == 403, body
    anon.reset()

    # Renewal over mTLS proves the current identity and nothing else.
    mtls = api_client(control, ca, issue_files(ca, FRONTEND_ID, tmp_path / "fe"))
    status, body = await mtls.call("POST", "/v1/identity", {"csr": other.decode()})
    assert status == 403, body
    own, _ = make_csr(SpiffeId.parse(FRONTEND_ID))
    status, body = await mtls.call("POST", "/v1/identity", {"csr": own.decode()})
    assert status == 200, body

    # Nor may it watch as another workload.
    status, body = await mtls.call("GET", "/v1/watch?proxy=p&workload=echo")
    assert status == 403
    assert "may not act as workload 'echo'" in json.loads(body)["error"]
    mtls.reset()


def settings(
    control: ControlServer, ca: CertificateAuthority, tmp_path: Path, workload: str, sa_id: str
) -> DynamicSettings:
    bundle = tmp_path / "trust.pem"
    bundle.write_bytes(ca.bundle_pem())
    return DynamicSettings(
        control=control_url(control),
        workload=workload,
        token=ca.issue_join_token(SpiffeId.parse(sa_id), now=time.time()),
        state_dir=tmp_path / "state" / workload,
        bundle=bundle,
        inbound=ANY,
        outbound=ANY,
        app=None,
        admin=None,
    )


@pytest.fixture
async def sidecars(
    control: ControlServer, ca: CertificateAuthority, tmp_path: Path, app: App
) -> AsyncIterator[tuple[DynamicProxy, DynamicProxy]]:
    echo = DynamicProxy(settings(control, ca, tmp_path, "echo", ECHO_ID))
    front = DynamicProxy(settings(control, ca, tmp_path, "frontend", FRONTEND_ID))
    await echo.start()
    await front.start()
    yield echo, front
    await front.stop(0.5)
    await echo.stop(0.5)


async def get_status(front: DynamicProxy) -> int:
    address = front.server.outbound_address
    async with httpx.AsyncClient(proxy=f"http://{address[0]}:{address[1]}", timeout=15.0) as c:
        response = await c.get("http://echo/hello")
    return response.status_code


async def test_sidecars_enroll_register_and_serve(
    sidecars: tuple[DynamicProxy, DynamicProxy], control: ControlServer, tmp_path: Path
) -> None:
    echo, front = sidecars
    # The frontend learns echo's endpoint as soon as echo registers it.
    await eventually(lambda: _has_echo_endpoint(front))
    assert await get_status(front) == 200
    key = tmp_path / "state" / "echo" / "key.pem"
    assert key.stat().st_mode & 0o077 == 0  # the key is private
    assert (tmp_path / "state" / "echo").stat().st_mode & 0o077 == 0
    status = control.status()
    assert {p["workload"] for p in status["proxies"]} == {"echo", "frontend"}
    await eventually(lambda: all(p["in_sync"] for p in control.status()["proxies"]))
    assert echo.applied is not None


def _has_echo_endpoint(front: DynamicProxy) -> bool:
    outbound = front.server.config.outbound
    return outbound is not None and any(s.name == "echo" for s in outbound.services)


async def test_config_change_pushed_and_invalid_change_refused(
    sidecars: tuple[DynamicProxy, DynamicProxy], control: ControlServer, config_dir: Path
) -> None:
    echo, front = sidecars
    await eventually(lambda: _has_echo_endpoint(front))
    assert await get_status(front) == 200

    before = echo.applied
    (config_dir / "deny.yaml").write_text(deny_frontend())
    await eventually(lambda: echo.applied != before)
    assert await get_status(front) == 403  # the pushed policy is live in echo's sidecar

    serving = control.store.current.digest
    applied = echo.applied
    (config_dir / "broken.yaml").write_text(deny_frontend("PERMIT").replace("no-frontend", "x"))
    await eventually(lambda: control.store.refused)
    assert any(str(config_dir / "broken.yaml") in p for p in control.store.refused)
    assert control.status()["config"]["refused"] == list(control.store.refused)
    assert control.store.current.digest == serving  # the last good config keeps serving
    assert echo.applied == applied
    assert await get_status(front) == 403

    (config_dir / "broken.yaml").unlink()
    (config_dir / "deny.yaml").unlink()
    await eventually(lambda: echo.applied not in (applied, None))
    assert control.store.refused == ()
    assert await get_status(front) == 200


async def test_unappliable_snapshot_is_nacked_and_old_one_kept(
    sidecars: tuple[DynamicProxy, DynamicProxy],
    control: ControlServer,
    config_dir: Path,
    app: App,
) -> None:
    echo, front = sidecars
    await eventually(lambda: _has_echo_endpoint(front))
    applied = echo.applied
    # A new app port needs a new upstream pool: the running sidecar refuses it.
    mesh = config_dir / "mesh.yaml"
    mesh.write_text(mesh.read_text().replace(f"port: {app.port}", f"port: {app.port + 1}"))

    def nacked() -> dict[str, str] | None:
        for p in control.status()["proxies"]:
            if p["workload"] == "echo" and p["nack"]:
                return dict(p["nack"])
        return None

    nack = await eventually(nacked)
    assert "inbound.app" in nack["reason"]
    assert echo.applied == applied
    assert echo.seen == nack["version"]
    assert await get_status(front) == 200  # echo still serves on the last good snapshot
    assert TD in echo.server.identity.spiffe_id


async def test_mtls_mode_and_routing_changes_apply_live(
    sidecars: tuple[DynamicProxy, DynamicProxy], control: ControlServer, config_dir: Path
) -> None:
    echo, front = sidecars
    await eventually(lambda: _has_echo_endpoint(front))
    inbound = echo.server.inbound_address
    plain = f"http://{inbound[0]}:{inbound[1]}/hello"
    with pytest.raises(httpx.HTTPError):  # STRICT: plaintext is refused
        async with httpx.AsyncClient(timeout=15.0) as c:
            await c.get(plain)

    applied = echo.applied
    (config_dir / "peer.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: p, namespace: default}\nspec: {mtls: {mode: PERMISSIVE}}\n"
    )
    await eventually(lambda: echo.applied != applied)
    async with httpx.AsyncClient(timeout=15.0) as c:
        assert (await c.get(plain)).status_code == 200  # PERMISSIVE: plaintext accepted

    before = front.applied
    (config_dir / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: echo, namespace: default}\n"
        "spec:\n  hosts: [echo]\n  http:\n"
        "    - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n"
        "      route: [{destination: {host: echo}}]\n"
    )
    await eventually(lambda: front.applied != before)
    assert await get_status(front) == 418  # the pushed route is live in the caller
    (config_dir / "vs.yaml").unlink()
    await eventually(lambda: front.server.config.outbound.routing == ())
    assert await get_status(front) == 200


async def test_renewal_under_load_keeps_serving(
    config_dir: Path, ca: CertificateAuthority, tmp_path: Path, app: App
) -> None:
    # 60 s is the CA's shortest SVID; with its 60 s backdating the Renewer is due
    # within seconds, so renewals happen during the test.
    control = ControlServer(
        config_dir=config_dir, ca=ca, hold_s=2.0, poll_s=0.2, resync_grace_s=0.0, svid_ttl_s=60.0
    )
    await control.start(socket.create_server(("127.0.0.1", 0)))
    echo = DynamicProxy(settings(control, ca, tmp_path, "echo", ECHO_ID))
    front = DynamicProxy(settings(control, ca, tmp_path, "frontend", FRONTEND_ID))
    try:
        await echo.start()
        await front.start()
        await eventually(lambda: _has_echo_endpoint(front))
        serials = (echo.server.identity.serial, front.server.identity.serial)
        address = front.server.outbound_address
        ok, failed = 0, []
        async with httpx.AsyncClient(
            proxy=f"http://{address[0]}:{address[1]}", timeout=15.0
        ) as client:
            deadline = time.monotonic() + 40.0
            while time.monotonic() < deadline:
                response = await client.get("http://echo/hello")
                if response.status_code == 200:
                    ok += 1
                else:
                    failed.append(response.status_code)
                renewed = (echo.server.identity.serial, front.server.identity.serial)
                if all(a != b for a, b in zip(renewed, serials, strict=True)) and ok > 50:
                    break
        assert failed == []
        assert echo.server.identity.serial != serials[0], "echo never renewed"
        assert front.server.identity.serial != serials[1], "frontend never renewed"
        # The control plane sees the renewed certificates on the watch connections.
        assert echo.credential is not None
        renewed_until = echo.credential.not_after
        await eventually(
            lambda: all(
                p["cert_not_after"] >= renewed_until - 1
                for p in control.status()["proxies"]
                if p["workload"] == "echo"
            )
        )
    finally:
        await front.stop(0.5)
        await echo.stop(0.5)
        await control.close()


async def test_used_token_stays_used_across_a_restart(
    control: ControlServer, ca: CertificateAuthority, config_dir: Path
) -> None:
    token = ca.issue_join_token(SpiffeId.parse(FRONTEND_ID), now=time.time())
    client = api_client(control, ca)
    csr, _ = make_csr(SpiffeId.parse(FRONTEND_ID))
    status, _body = await client.call("POST", "/v1/identity", {"csr": csr.decode(), "token": token})
    assert status == 200
    client.reset()
    await control.close()

    again = ControlServer(config_dir=config_dir, ca=ca, hold_s=2.0)
    await again.start(socket.create_server(("127.0.0.1", 0)))
    try:
        client = api_client(again, ca)
        status, body = await client.call(
            "POST", "/v1/identity", {"csr": csr.decode(), "token": token}
        )
        client.reset()
    finally:
        await again.close()
    assert status == 403
    assert "already used" in json.loads(body)["error"]
    ledger = ca.directory / "control" / "used-tokens"
    assert ledger.stat().st_mode & 0o077 == 0


async def test_leaving_sidecar_is_withdrawn_from_its_peers(
    sidecars: tuple[DynamicProxy, DynamicProxy], control: ControlServer
) -> None:
    echo, front = sidecars
    await eventually(lambda: _has_echo_endpoint(front))
    await echo.stop(0.5)
    await eventually(lambda: not _has_echo_endpoint(front))
    assert [p["workload"] for p in control.status()["proxies"]] == ["frontend"]
    address = front.server.outbound_address
    async with httpx.AsyncClient(proxy=f"http://{address[0]}:{address[1]}", timeout=15.0) as c:
        response = await c.get("http://echo/hello")
    assert response.status_code == 502  # no endpoint left: answered at once, not hung


async def test_restarted_sidecar_reuses_its_certificate_not_the_token(
    control: ControlServer, ca: CertificateAuthority, tmp_path: Path, app: App
) -> None:
    config = settings(control, ca, tmp_path, "echo", ECHO_ID)
    first = DynamicProxy(config)
    await first.start()
    serial = first.server.identity.serial
    await first.stop(0.5)
    second = DynamicProxy(config)  # same state dir, same (already used) token
    try:
        await second.start()
        assert second.server.identity.serial == serial
        assert second.proxy_id != first.proxy_id
        await eventually(
            lambda: [p["proxy"] for p in control.status()["proxies"]] == [second.proxy_id]
        )
    finally:
        await second.stop(0.5)
