"""The static bootstrap: the issue's example loads, every mistake is reported
with file:line, security keys are never ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlet.config.bootstrap import (
    Address,
    MtlsMode,
    Timeouts,
    load_bootstrap,
    parse_address,
    parse_bootstrap,
)
from meshlet.config.source import parse_yaml
from meshlet.errors import ConfigError

ISSUE_EXAMPLE = """\
identity: {cert: cert.pem, key: key.pem, bundle: bundle.pem}
admin: 127.0.0.1:15000
inbound:
  listen: 127.0.0.1:15006
  app: 127.0.0.1:8080
  mtls: STRICT
  protocol: http
outbound:
  listen: 127.0.0.1:15001
  services:
    inference:
      protocol: http
      endpoints:
        - {address: 127.0.0.1:16006, identity: "spiffe://cluster.local/ns/ml/sa/inference"}
"""


def _parse(text: str, file: str = "/etc/meshlet/proxy.yaml"):  # type: ignore[no-untyped-def]
    return parse_bootstrap(parse_yaml(text, file)[0])


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    return list(info.value.problems)


def test_issue_example_loads_with_defaults() -> None:
    cfg = _parse(ISSUE_EXAMPLE)
    assert cfg.identity.cert == Path("/etc/meshlet/cert.pem")  # relative to the file
    assert cfg.admin == Address(host="127.0.0.1", port=15000)
    assert cfg.inbound is not None
    assert cfg.inbound.mtls is MtlsMode.STRICT
    assert cfg.inbound.app == Address(host="127.0.0.1", port=8080)
    assert cfg.outbound is not None
    (svc,) = cfg.outbound.services
    assert svc.name == "inference"
    assert svc.endpoints[0].identity == "spiffe://cluster.local/ns/ml/sa/inference"
    assert cfg.timeouts == Timeouts()
    assert cfg.limits.max_headers == 100
    assert cfg.limits.max_header_bytes == 60 * 1024


def test_load_bootstrap_reads_a_file(tmp_path: Path) -> None:
    f = tmp_path / "proxy.yaml"
    f.write_text(ISSUE_EXAMPLE)
    cfg = load_bootstrap(f)
    assert cfg.identity.key == tmp_path / "key.pem"
    assert cfg.source == str(f)


def test_mtls_defaults_to_strict_and_admin_can_be_off() -> None:
    cfg = _parse(
        "identity: {cert: c, key: k, bundle: b}\nadmin: null\n"
        "inbound: {listen: '127.0.0.1:1', app: '127.0.0.1:2'}\n"
    )
    assert cfg.inbound is not None
    assert cfg.inbound.mtls is MtlsMode.STRICT
    assert cfg.admin is None


def test_every_problem_is_reported_with_file_and_line() -> None:
    problems = _problems(
        "identity: {cert: c.pem, key: k.pem}\n"  # 1 bundle missing
        "inbound:\n"
        "  listen: 127.0.0.1:99999\n"  # 3 bad port
        "  app: 127.0.0.1:8080\n"
        "  mtls: STRIKT\n"  # 5 bad enum
        "  colour: blue\n"  # 6 unknown key
        "outbound:\n"
        "  listen: 127.0.0.1:15001\n"
        "  services:\n"
        "    a:\n"
        "      endpoints:\n"
        "        - {address: 127.0.0.1:1, identity: 'http://x'}\n"  # 12 not SPIFFE
        "timeouts: {connect_s: 0}\n"  # 13 out of range
    )
    expected = [
        "/etc/meshlet/proxy.yaml:1: identity.bundle: field required",
        "/etc/meshlet/proxy.yaml:3: inbound.listen: address '127.0.0.1:99999': port must be",
        "/etc/meshlet/proxy.yaml:5: inbound.mtls: must be one of",
        "/etc/meshlet/proxy.yaml:6: inbound.colour: unknown field",
        "/etc/meshlet/proxy.yaml:12: outbound.services.a.endpoints[0].identity: must be a SPIFFE",
        "/etc/meshlet/proxy.yaml:13: timeouts.connect_s: must be > 0.0",
    ]
    assert len(problems) == len(expected), problems
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(
            "identity: {cert: c, key: k, bundle: b}\n", "at least one of", id="no-listener"
        ),
        pytest.param(
            "inbound: {listen: '127.0.0.1:1', app: '127.0.0.1:2'}\n",
            "identity: field required",
            id="no-identity",
        ),
        pytest.param(
            "identity: {cert: c, key: k, bundle: b}\noutbound:\n  listen: 127.0.0.1:1\n"
            "  services: {db: {protocol: tcp, endpoints: [{address: '127.0.0.1:2', "
            "identity: 'spiffe://td/x'}]}}\n",
            "needs its own 'listen'",
            id="tcp-no-listen",
        ),
        pytest.param(
            "identity: {cert: c, key: k, bundle: b}\noutbound:\n  listen: 127.0.0.1:1\n"
            "  routing: routes.yaml\n",
            "outbound.routing: must be a list of strings",
            id="routing-not-a-list",
        ),
        pytest.param(
            "identity: {cert: c, key: k, bundle: b}\nlimits: {max_headers: 1.5}\n"
            "inbound: {listen: '127.0.0.1:1', app: '127.0.0.1:2'}\n",
            "must be an integer",
            id="non-integer-limit",
        ),
        pytest.param("- a\n- b\n", "must be a mapping", id="not-a-mapping"),
    ],
)
def test_refusals(text: str, fragment: str) -> None:
    problems = _problems(text)
    assert any(fragment in p for p in problems), problems


def test_tcp_service_with_listen_loads() -> None:
    cfg = _parse(
        "identity: {cert: c, key: k, bundle: b}\noutbound:\n  listen: 127.0.0.1:1\n"
        "  services:\n    db:\n      protocol: tcp\n      listen: 127.0.0.1:5432\n"
        "      endpoints: [{address: '10.0.0.1:15006', identity: 'spiffe://td/ns/a/sa/db',"
        " labels: {version: v2}}]\n"
    )
    assert cfg.outbound is not None
    (db,) = cfg.outbound.services
    assert db.listen == Address(host="127.0.0.1", port=5432)
    assert db.endpoints[0].labels == (("version", "v2"),)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:80", "127.0.0.1", 80), ("[::1]:15001", "::1", 15001), ("svc:0", "svc", 0)],
)
def test_parse_address(text: str, host: str, port: int) -> None:
    assert parse_address(text) == Address(host=host, port=port)


@pytest.mark.parametrize("text", ["nohost", ":80", "h:", "h:x", "[::1]80", "h:70000"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_address(text)
