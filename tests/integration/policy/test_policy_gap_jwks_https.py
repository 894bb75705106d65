"""``https://`` jwksUri and OpenID discovery against a real TLS server on 127.0.0.1
whose certificate comes from a test CA: trusted only through a ``JwksResolver``
extra root, refused (401, fail closed) when the chain or the name does not
verify, cached and retried like the ``http://`` path."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm
from tests.support.waiting import eventually

from meshlet.clock import ManualClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    IdentityFiles,
    InboundConfig,
    MtlsMode,
    WorkloadConfig,
)
from meshlet.errors import ConfigError
from meshlet.proxy.authz import JWKS_REFRESH_S, JWKS_RETRY_S, PolicyGate, build_gate
from meshlet.proxy.hooks import GateVerdict, RequestInfo

pytestmark = pytest.mark.integration
STEP_S = 15.0  # one bounded await on a loaded machine
KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(KEY.public_key())), "kid": "k"}]})


# ------------------------------------------------------------ a test CA for TLS


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class LocalCa:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def create(cls, cn: str = "meshlet test JWKS CA") -> LocalCa:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return cls(cert=cert, key=key)

    def server_context(self, directory: Path, *, ip: str | None, dns: str | None) -> ssl.SSLContext:
        """A TLS server context with a leaf for ``ip``/``dns`` signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        if dns:
            sans.append(x509.DNSName(dns))
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(dns or ip or "server"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (directory / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        return ctx


# ------------------------------------------------------------ the HTTPS server

# (target) -> (status, body, chunked)
Route = Callable[[str], tuple[int, bytes, bool]]


@dataclass
class Server:
    port: int = 0
    requests: list[str] = field(default_factory=list)


@dataclass
class Served:
    server: Server
    url: str


async def _serve_one(route: Route, state: Server, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:  # fmt: skip
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        target = head.split(" ", 2)[1]
        state.requests.append(target)
        status, body, chunked = route(target)
        if chunked:  # two chunks, an extension and a trailer: the whole of RFC 9112 7.1
            half = len(body) // 2
            framed = b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nx-trailer: 1\r\n\r\n" % (
                half, body[:half], len(body) - half, body[half:],
            )  # fmt: skip
            framing = b"transfer-encoding: chunked"
        else:
            framed, framing = body, b"content-length: %d" % len(body)
        writer.write(
            b"HTTP/1.1 %d X\r\n%s\r\nconnection: close\r\n\r\n%s" % (status, framing, framed)
        )
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass  # the client gave up; it is the client's verdict the tests check
    finally:
        writer.close()


StartHttps = Callable[[ssl.SSLContext, Route], Awaitable[Server]]


@pytest.fixture
async def https() -> AsyncIterator[StartHttps]:
    """Start HTTPS servers on 127.0.0.1 port 0; all closed after the test."""
    servers: list[asyncio.Server] = []

    async def start(ctx: ssl.SSLContext, route: Route) -> Server:
        state = Server()
        server = await asyncio.start_server(
            lambda r, w: _serve_one(route, state, r, w), "127.0.0.1", 0, ssl=ctx
        )
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------- the gate


def gate_for(
    tmp_path: Path, rule: str, *, extra_root: str | None, clock: ManualClock
) -> PolicyGate:
    docs = [
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata: {{name: jwt, namespace: ml}}\nspec:\n  jwtRules: [{rule}]\n",
    ]
    if extra_root is not None:
        (tmp_path / "ca.pem").write_text(extra_root)
        docs.append(
            "apiVersion: meshlet.dev/v1alpha1\nkind: JwksResolver\n"
            "metadata: {name: trust, namespace: istio-system}\n"
            "spec: {extraRootCAFile: ca.pem}\n"
        )
    policies = tmp_path / "p.yaml"
    policies.write_text("---\n".join(docs))
    config = BootstrapConfig(
        identity=IdentityFiles(cert=tmp_path / "c", key=tmp_path / "k", bundle=tmp_path / "b"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host="127.0.0.1", port=0), app=Address(host="127.0.0.1", port=1),
            mtls=MtlsMode.PERMISSIVE, protocol="http", policies=(policies,),
        ),
        outbound=None,
        workload=WorkloadConfig(namespace="ml"),
    )  # fmt: skip
    gate = build_gate(config, clock=clock)
    assert gate is not None
    return gate


def request(clock: ManualClock, iss: str) -> RequestInfo:
    token = jwt.encode(
        {"iss": iss, "sub": "alice", "exp": clock.wall() + 3600}, KEY, "ES256", headers={"kid": "k"}
    )
    return RequestInfo(
        method="GET", path="/", host="h", headers=[(b"authorization", f"Bearer {token}".encode())],
        source_principal=None, source_ip="127.0.0.1", source_port=1, destination_ip="127.0.0.1",
        destination_port=2, sni=None, mtls=False, request_id="r",
    )  # fmt: skip


async def verdict(gate: PolicyGate, clock: ManualClock, iss: str) -> GateVerdict:
    result = gate.check(request(clock, iss))
    if isinstance(result, GateVerdict):
        return result
    return await asyncio.wait_for(result, timeout=STEP_S)


def jwks_route(target: str) -> tuple[int, bytes, bool]:
    return (200, JWKS.encode(), False) if target == "/keys" else (404, b"", False)


# ------------------------------------------------------------------- the tests


async def test_https_jwks_trusted_through_the_extra_root(tmp_path: Path, https: StartHttps) -> None:
    ca = LocalCa.create()
    server = await https(ca.server_context(tmp_path / "srv", ip="127.0.0.1", dns=None), jwks_route)
    clock = ManualClock()
    rule = f"{{issuer: iss, jwksUri: 'https://127.0.0.1:{server.port}/keys'}}"
    gate = gate_for(tmp_path, rule, extra_root=ca.pem, clock=clock)
    first = await verdict(gate, clock, "iss")
    assert first.allowed, first
    assert server.requests == ["/keys"]
    assert (await verdict(gate, clock, "iss")).allowed
    assert server.requests == ["/keys"]  # cached: no fetch per request


@pytest.mark.parametrize(
    ("trust_test_ca", "ip", "dns"),
    [
        pytest.param(False, "127.0.0.1", None, id="unknown-ca"),
        pytest.param(True, None, "jwks.example", id="wrong-name"),
    ],
)
async def test_unverifiable_https_jwks_fails_closed(
    tmp_path: Path,
    https: StartHttps,
    caplog: pytest.LogCaptureFixture,
    trust_test_ca: bool,
    ip: str | None,
    dns: str | None,
) -> None:
    ca = LocalCa.create()
    server = await https(ca.server_context(tmp_path / "srv", ip=ip, dns=dns), jwks_route)
    clock = ManualClock()
    rule = f"{{issuer: iss, jwksUri: 'https://127.0.0.1:{server.port}/keys'}}"
    # without the resolver only the system store is trusted, which never holds a test CA
    gate = gate_for(tmp_path, rule, extra_root=ca.pem if trust_test_ca else None, clock=clock)
    result = await verdict(gate, clock, "iss")
    assert (result.allowed, result.status) == (False, 401)  # a good token, but no keys
    assert server.requests == []  # the handshake failed before any GET was sent
    errors = [str(getattr(r, "error", "")) for r in caplog.records if r.msg == "jwks_fetch_failed"]
    assert errors, "the failed fetch was not logged"
    assert "CERTIFICATE_VERIFY_FAILED" in errors[0]


async def test_https_jwks_is_refreshed_and_retried_like_http(
    tmp_path: Path, https: StartHttps
) -> None:
    ca = LocalCa.create()
    answers = iter([(503, b"down", False), (200, JWKS.encode(), True), (200, JWKS.encode(), True)])
    server = await https(
        ca.server_context(tmp_path / "srv", ip="127.0.0.1", dns="localhost"),
        lambda _target: next(answers),
    )
    clock = ManualClock()
    rule = f"{{issuer: iss, jwksUri: 'https://localhost:{server.port}/keys'}}"
    gate = gate_for(tmp_path, rule, extra_root=ca.pem, clock=clock)
    assert (await verdict(gate, clock, "iss")).status == 401  # first fetch: 503
    assert (await verdict(gate, clock, "iss")).status == 401  # no refetch per request
    assert len(server.requests) == 1
    clock.advance(JWKS_RETRY_S + 1)
    await verdict(gate, clock, "iss")  # schedules the retry in the background
    await eventually(lambda: len(server.requests) == 2 and not gate.keys.refreshing)
    assert (await verdict(gate, clock, "iss")).allowed  # chunked JWKS loaded
    clock.advance(JWKS_REFRESH_S + 1)
    await verdict(gate, clock, "iss")
    await eventually(lambda: len(server.requests) == 3 and not gate.keys.refreshing)
    assert (await verdict(gate, clock, "iss")).allowed


async def test_openid_discovery_over_https(tmp_path: Path, https: StartHttps) -> None:
    ca = LocalCa.create()
    port_box: list[int] = []

    def route(target: str) -> tuple[int, bytes, bool]:
        if target == "/tenant/.well-known/openid-configuration":
            issuer = f"https://127.0.0.1:{port_box[0]}/tenant"
            doc = {"issuer": issuer, "jwks_uri": f"https://127.0.0.1:{port_box[0]}/keys"}
            return 200, json.dumps(doc).encode(), False
        return jwks_route(target)

    server = await https(ca.server_context(tmp_path / "srv", ip="127.0.0.1", dns=None), route)
    port_box.append(server.port)
    issuer = f"https://127.0.0.1:{server.port}/tenant"
    clock = ManualClock()
    gate = gate_for(tmp_path, f"{{issuer: '{issuer}/'}}", extra_root=ca.pem, clock=clock)
    result = await verdict(gate, clock, f"{issuer}/")
    assert result.allowed, result
    assert server.requests == ["/tenant/.well-known/openid-configuration", "/keys"]


async def test_discovery_refuses_a_plain_http_jwks_uri(tmp_path: Path, https: StartHttps) -> None:
    ca = LocalCa.create()

    def route(target: str) -> tuple[int, bytes, bool]:
        doc = {"jwks_uri": "http://jwks.example/keys"}  # not https, not loopback
        return 200, json.dumps(doc).encode(), False

    server = await https(ca.server_context(tmp_path / "srv", ip="127.0.0.1", dns=None), route)
    issuer = f"https://127.0.0.1:{server.port}"
    clock = ManualClock()
    gate = gate_for(tmp_path, f"{{issuer: '{issuer}'}}", extra_root=ca.pem, clock=clock)
    assert (await verdict(gate, clock, issuer)).status == 401
    assert server.requests == ["/.well-known/openid-configuration"]  # never followed


def test_unusable_extra_root_stops_the_gate_from_building(tmp_path: Path) -> None:
    bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError, match="JwksResolver extraRootCA: not usable"):
        gate_for(
            tmp_path,
            "{issuer: iss, jwksUri: 'https://127.0.0.1:1/keys'}",
            extra_root=bad,
            clock=ManualClock(),
        )
