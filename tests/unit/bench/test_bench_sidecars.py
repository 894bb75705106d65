"""Every sidecar pair is configured for the same job: TLS 1.3, client certs, SPIFFE checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshlet.bench import sidecars
from meshlet.bench.certs import CLIENT_ID, SERVER_ID, BenchCerts, Identity
from meshlet.bench.upstreams import ECHO_RESPONSE, sse_chunk


@pytest.fixture
def certs(tmp_path: Path) -> BenchCerts:
    def ident(name: str, spiffe_id: str) -> Identity:
        return Identity(
            spiffe_id=spiffe_id,
            cert=tmp_path / name / "cert.pem",
            key=tmp_path / name / "key.pem",
            combined=tmp_path / name / "combined.pem",
        )

    return BenchCerts(
        bundle=tmp_path / "bundle.pem",
        server=ident("server", SERVER_ID),
        client=ident("client", CLIENT_ID),
        ca_dir=tmp_path / "ca",
    )


def test_envoy_server_requires_the_client_spiffe_id(certs: BenchCerts) -> None:
    text = json.dumps(sidecars.envoy_server_config(certs, app_port=1234))
    cfg = json.loads(text)
    tls = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"][
        "typed_config"
    ]
    assert tls["require_client_certificate"] is True
    sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "URI", "matcher": {"exact": CLIENT_ID}}]
    assert tls["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3"
    assert '"port_value": 1234' in text


def test_envoy_client_pins_the_server_spiffe_id(certs: BenchCerts) -> None:
    cfg = sidecars.envoy_client_config(certs, server_port=4321)
    cluster = cfg["static_resources"]["clusters"][0]
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert common["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {
        "exact": SERVER_ID
    }
    # Upstream TLS defaults to a max of 1.2 in Envoy: both bounds must say 1.3.
    assert common["tls_params"]["tls_maximum_protocol_version"] == "TLSv1_3"


def test_haproxy_checks_both_identities_and_verifies(certs: BenchCerts) -> None:
    server = sidecars.haproxy_server_config(certs, listen_fd=5, app_port=99, threads=2)
    client = sidecars.haproxy_client_config(certs, listen_fd=6, server_port=98, threads=1)
    assert "bind fd@5 ssl" in server
    assert "verify required" in server
    assert CLIENT_ID.encode().hex().upper() in server
    assert "nbthread 2" in server
    assert SERVER_ID.encode().hex().upper() in client
    assert "ssl verify required" in client
    assert "127.0.0.1:98" in client


def test_meshlet_pair_pins_server_identity(certs: BenchCerts) -> None:
    client = sidecars.meshlet_client_config(certs, server_port=7000)
    endpoint = client["outbound"]["services"]["upstream"]["endpoints"][0]
    assert endpoint == {"address": "127.0.0.1:7000", "identity": SERVER_ID}
    server = sidecars.meshlet_server_config(certs, app_port=7001, policy_file=Path("p.yaml"))
    assert server["inbound"]["mtls"] == "STRICT"
    assert server["inbound"]["policies"] == ["p.yaml"]


@pytest.mark.parametrize(
    ("principal", "action"),
    [
        pytest.param(CLIENT_ID, "ALLOW", id="the-client"),
        pytest.param(SERVER_ID, "DENY", id="another-svid-of-the-bundle"),
        pytest.param(None, "DENY", id="no-mtls"),
    ],
)
def test_meshlet_server_policy_admits_only_the_client(
    certs: BenchCerts, principal: str | None, action: str
) -> None:
    from meshlet.config.istio_security import load_security_documents
    from meshlet.config.source import parse_yaml
    from meshlet.policy.attributes import RequestAttributes, strip_spiffe
    from meshlet.policy.scope import Workload, compile_workload

    doc = json.dumps(sidecars.meshlet_server_policy(certs))
    config = load_security_documents(parse_yaml(doc, "policy.yaml"))
    security = compile_workload(config, Workload(namespace="bench"))
    peer = strip_spiffe(principal) if principal else None  # as the proxy's gate passes it
    request = RequestAttributes(method="GET", path="/", source_principal=peer)
    assert str(security.authorization.evaluate(request).action.value) == action


def test_echo_body_is_one_kib_and_sse_chunks_are_framed() -> None:
    head, _, body = ECHO_RESPONSE.partition(b"\r\n\r\n")
    assert len(body) == 1024
    assert b"Content-Length: 1024" in head
    assert sse_chunk(b"tok1") == b"c\r\ndata: tok1\n\n\r\n"


def test_inference_body_is_a_kserve_batch_of_four_224px_images() -> None:
    import base64

    from meshlet.bench.payloads import inference_body

    body = json.loads(inference_body())
    tensor = body["inputs"][0]
    assert tensor["datatype"] == "BYTES"
    assert tensor["shape"] == [4]
    assert [len(base64.b64decode(item)) for item in tensor["data"]] == [224 * 224 * 3] * 4
    assert inference_body() == inference_body()  # the same bytes for every topology
    # ...and the reference server's own parser accepts it.
    from meshlet.workloads.tensors import images_from_request

    assert images_from_request(body).shape == (4, 224, 224, 3)
