"""JWT token sources and key sources left out last round: ``fromCookies``, OpenID
discovery rules, and the ``JwksResolver`` trust document, loaded from YAML and
checked on real signed tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from policy_cases import docs, load, policy

from meshlet.config.istio_security import JwtRule, load_security_paths, secure_or_loopback
from meshlet.errors import ConfigError
from meshlet.policy.jwt import JwtAuthenticator, discovery_url, key_source, parse_cookies

NOW = 1_700_000_000.0
ISS = "https://issuer.example"
KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(KEY.public_key())), "kid": "k"}]})
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"  # shape only: not parsed


def token(**claims: Any) -> str:
    body = {"iss": ISS, "sub": "alice", "exp": NOW + 600, **claims}
    return jwt.encode(body, KEY, algorithm="ES256", headers={"kid": "k"})


def cookie_auth(*names: str, **rule: Any) -> JwtAuthenticator:
    return JwtAuthenticator([JwtRule(issuer=ISS, jwks=JWKS, from_cookies=names, **rule)])


# ------------------------------------------------------------------ cookies


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(("a=1; b=2",), {"a": "1", "b": "2"}, id="two-pairs"),
        pytest.param(("a=1", "b=2"), {"a": "1", "b": "2"}, id="two-headers"),
        pytest.param(('a="quoted"',), {"a": "quoted"}, id="dquotes-dropped"),
        pytest.param(("a=1; a=2",), {"a": "1"}, id="first-wins"),
        pytest.param(("A=1",), {"A": "1"}, id="case-kept"),
        pytest.param(("novalue; =x; b=",), {"b": ""}, id="junk-skipped"),
        pytest.param(("t=x.y=z",), {"t": "x.y=z"}, id="equals-in-value"),
    ],
)
def test_parse_cookies(headers: tuple[str, ...], expected: dict[str, str]) -> None:
    assert parse_cookies(headers) == expected


def test_token_in_a_named_cookie_authenticates() -> None:
    headers = {"cookie": (f"theme=dark; session={token()}",)}
    result = cookie_auth("session").authenticate(headers, "", now=NOW)
    assert result.ok, result.reason
    assert result.principal == f"{ISS}/alice"
    assert result.remove_headers == ()  # as Envoy: the Cookie header is forwarded


def test_cookies_are_tried_in_order_and_every_token_is_checked() -> None:
    good = token()
    second = cookie_auth("a", "b").authenticate({"cookie": (f"b={good}",)}, "", now=NOW)
    assert second.ok, second.reason
    bad = token(exp=NOW - 3600)
    both = cookie_auth("a", "b").authenticate({"cookie": (f"a={good}; b={bad}",)}, "", now=NOW)
    assert (both.ok, both.reason) == (False, "Jwt is expired")


def test_bad_token_in_cookie_is_401_and_other_cookies_are_ignored() -> None:
    auth = cookie_auth("session")
    bad = auth.authenticate({"cookie": ("session=not-a-jwt",)}, "", now=NOW)
    assert not bad.ok
    ignored = auth.authenticate({"cookie": ("other=not-a-jwt",)}, "", now=NOW)
    assert (ignored.ok, ignored.principal) == (True, None)


def test_from_cookies_replaces_the_default_locations() -> None:
    # Envoy uses Authorization: Bearer / access_token only when no location is named
    auth = cookie_auth("session")
    header = auth.authenticate({"authorization": ("Bearer junk",)}, "access_token=junk", now=NOW)
    assert (header.ok, header.principal) == (True, None)


def test_cookie_alongside_header_locations() -> None:
    auth = cookie_auth("session", from_headers=(("x-jwt", ""),))
    from_header = auth.authenticate({"x-jwt": (token(),)}, "", now=NOW)
    assert (from_header.ok, from_header.remove_headers) == (True, ("x-jwt",))
    from_cookie = auth.authenticate({"cookie": (f"session={token(sub='bob')}",)}, "", now=NOW)
    assert from_cookie.principal == f"{ISS}/bob"


def test_from_cookies_loads_from_yaml() -> None:
    spec = f"jwtRules: [{{issuer: {ISS}, jwks: '{JWKS}', fromCookies: [session, sid]}}]"
    (ra,) = load(policy("ra", spec, kind="RequestAuthentication")).request_authentications
    assert ra.jwt_rules[0].from_cookies == ("session", "sid")


@pytest.mark.parametrize("name", ["a b", "a;b", "a=b", "", "a,b", "é"])
def test_invalid_cookie_names_are_refused(name: str) -> None:
    spec = f"jwtRules: [{{issuer: {ISS}, jwks: '{{}}', fromCookies: ['{name}']}}]"
    with pytest.raises(ConfigError) as info:
        load(policy("ra", spec, kind="RequestAuthentication"))
    assert "spec.jwtRules[0].fromCookies[0]: not a valid cookie name" in str(info.value)


# ---------------------------------------------------------- OpenID discovery


@pytest.mark.parametrize(
    ("issuer", "url"),
    [
        pytest.param("https://a.example", "https://a.example/.well-known/openid-configuration"),
        pytest.param("https://a.example/", "https://a.example/.well-known/openid-configuration"),
        pytest.param("https://a.example/t/1", "https://a.example/t/1/.well-known/openid-configuration"),
    ],
)  # fmt: skip
def test_discovery_url(issuer: str, url: str) -> None:
    assert discovery_url(issuer) == url
    assert key_source(JwtRule(issuer=issuer)) == url


def test_discovery_rules_are_key_sources() -> None:
    auth = JwtAuthenticator(
        [
            JwtRule(issuer="https://d.example"),
            JwtRule(issuer="https://u.example", jwks_uri="https://u.example/keys"),
            JwtRule(issuer=ISS, jwks=JWKS),
        ]
    )
    assert auth.jwks_uris == (
        "https://d.example/.well-known/openid-configuration",
        "https://u.example/keys",
    )
    assert auth.discovery_urls == {"https://d.example/.well-known/openid-configuration"}
    # without keys yet the discovery issuer's tokens are refused, never passed
    unkeyed = token(iss="https://d.example")
    result = auth.authenticate({"authorization": (f"Bearer {unkeyed}",)}, "", now=NOW)
    assert not result.ok
    keyed = auth.with_jwks("https://d.example/.well-known/openid-configuration", JWKS)
    assert keyed.authenticate({"authorization": (f"Bearer {unkeyed}",)}, "", now=NOW).ok


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        pytest.param("https://idp.example", True, id="https"),
        pytest.param("http://127.0.0.1:8080", True, id="http-loopback-v4"),
        pytest.param("http://127.8.0.1", True, id="http-loopback-net"),
        pytest.param("http://localhost", True, id="http-localhost"),
        pytest.param("http://[::1]:9", True, id="http-loopback-v6"),
        pytest.param("http://idp.example", False, id="http-remote"),
        pytest.param("http://10.0.0.1", False, id="http-private"),
        pytest.param("http://127.example.com", False, id="http-name-like-loopback"),
        pytest.param("issuer-foo", False, id="not-a-url"),
        pytest.param("https://", False, id="no-host"),
        pytest.param("ftp://idp.example", False, id="other-scheme"),
    ],
)
def test_secure_or_loopback(url: str, allowed: bool) -> None:
    assert secure_or_loopback(url) is allowed


def discovery_rule(issuer: str) -> str:
    return policy("ra", f"jwtRules: [{{issuer: '{issuer}'}}]", kind="RequestAuthentication")


def test_discovery_rule_loads_and_plain_http_issuer_is_refused() -> None:
    ok = load(discovery_rule("https://idp.example"))
    assert ok.request_authentications[0].jwt_rules[0].jwks_uri is None
    with pytest.raises(ConfigError) as info:
        load(discovery_rule("http://idp.example"))
    assert "policies.yaml:5: RequestAuthentication foo/ra (document 0)" in str(info.value)
    assert "spec.jwtRules[0].issuer: OpenID discovery" in str(info.value)


# --------------------------------------------------------------- JwksResolver


def resolver(spec: str) -> str:
    return (
        "apiVersion: meshlet.dev/v1alpha1\nkind: JwksResolver\n"
        f"metadata: {{name: trust, namespace: istio-system}}\nspec: {spec}\n"
    )


def test_resolver_inline_pem_loads() -> None:
    config = load(resolver(json.dumps({"extraRootCA": CA_PEM})))
    assert config.jwks_extra_root_ca == CA_PEM
    assert load(policy("p", "{}")).jwks_extra_root_ca is None


def test_resolver_file_is_read_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text(CA_PEM)
    (tmp_path / "trust.yaml").write_text(resolver("{extraRootCAFile: certs/ca.pem}"))
    assert load_security_paths([str(tmp_path)]).jwks_extra_root_ca == CA_PEM


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("{}", "set exactly one of extraRootCA and extraRootCAFile", id="neither"),
        pytest.param(
            json.dumps({"extraRootCA": CA_PEM, "extraRootCAFile": "x"}),
            "set exactly one",
            id="both",
        ),
        pytest.param("{extraRootCA: x}", "extraRootCA: holds no PEM certificate", id="not-pem"),
        pytest.param("{extraRootCAFile: /nonexistent/ca.pem}", "cannot read", id="missing-file"),
        pytest.param("{insecureSkipVerify: true}", "unknown field", id="no-skip-verify"),
    ],
)  # fmt: skip
def test_resolver_refusals(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(resolver(spec))
    assert expected in str(info.value)
    assert "JwksResolver istio-system/trust (document 0)" in str(info.value)


def test_second_resolver_is_refused() -> None:
    one = resolver(json.dumps({"extraRootCA": CA_PEM}))
    two = one.replace("name: trust", "name: other")
    with pytest.raises(ConfigError) as info:
        load(docs(one, two))
    assert "a second JwksResolver (the first is at policies.yaml:1)" in str(info.value)
