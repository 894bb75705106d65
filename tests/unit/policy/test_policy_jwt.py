"""JWT authentication: Istio's RequestAuthentication behaviour on real signed tokens."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from meshlet.config.istio_security import JwtRule
from meshlet.errors import ConfigError
from meshlet.policy.jwt import CLOCK_SKEW_S, JwtAuthenticator, parse_jwks

NOW = 1_700_000_000.0
ISS = "https://issuer.example"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(algorithm: Any, key: Any, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    data["kid"] = kid
    return data


JWKS = json.dumps(
    {
        "keys": [
            _jwk(RSAAlgorithm, RSA_KEY, "rsa"),
            _jwk(ECAlgorithm, EC_KEY, "ec"),
            _jwk(OKPAlgorithm, ED_KEY, "ed"),
        ]
    }
)
KEYS = {"RS256": (RSA_KEY, "rsa"), "ES256": (EC_KEY, "ec"), "EdDSA": (ED_KEY, "ed")}


def token(alg: str = "RS256", **claims: Any) -> str:
    key, kid = KEYS[alg]
    body = {"iss": ISS, "sub": "alice", "exp": NOW + 3600, "aud": "models", **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def _swap_signature(t: str, donor: str) -> str:
    return ".".join([*t.split(".")[:2], donor.split(".")[2]])


def bearer(t: str) -> dict[str, tuple[str, ...]]:
    return {"authorization": (f"Bearer {t}",)}


def auth(**rule: Any) -> JwtAuthenticator:
    return JwtAuthenticator([JwtRule(issuer=ISS, jwks=JWKS, **rule)])


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_sets_request_principal(alg: str) -> None:
    result = auth().authenticate(bearer(token(alg)), "", now=NOW)
    assert result.ok, result.reason
    assert result.principal == f"{ISS}/alice"
    assert result.audiences == ("models",)
    assert result.remove_headers == ("authorization",)  # forwardOriginalToken: false


def test_no_token_passes_without_principal() -> None:
    result = auth().authenticate({"x-other": ("1",)}, "a=b", now=NOW)
    assert result.ok
    assert result.principal is None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: _swap_signature(token(), token(sub="bob")), "key", id="bad-signature"),
        pytest.param(lambda: token(iss="https://evil"), "issuer", id="unknown-issuer"),
        pytest.param(lambda: token(exp=NOW - CLOCK_SKEW_S - 1), "expired", id="expired"),
        pytest.param(lambda: token(nbf=NOW + CLOCK_SKEW_S + 5), "not yet", id="not-yet-valid"),
        pytest.param(lambda: "not.a.jwt", "form", id="garbage"),
        pytest.param(
            lambda: jwt.encode({"iss": ISS, "sub": "a"}, "secret" * 6, algorithm="HS256"),
            "algorithm",
            id="hmac-refused",
        ),
        pytest.param(
            lambda: jwt.encode(
                {"iss": ISS, "sub": "a"}, OTHER_RSA, algorithm="RS256", headers={"kid": "rsa"}
            ),
            "key",
            id="signed-by-other-key",
        ),
    ],
)
def test_invalid_tokens_are_rejected(make: Any, reason: str) -> None:
    result = auth().authenticate(bearer(make()), "", now=NOW)
    assert not result.ok
    assert reason in result.reason.lower()


def test_expiry_within_clock_skew_is_accepted() -> None:
    assert auth().authenticate(bearer(token(exp=NOW - CLOCK_SKEW_S + 1)), "", now=NOW).ok


def test_audiences_are_enforced_when_configured() -> None:
    strict = auth(audiences=("other", "models"))
    assert strict.authenticate(bearer(token()), "", now=NOW).ok
    assert not strict.authenticate(bearer(token(aud=["x", "y"])), "", now=NOW).ok


def test_one_invalid_token_rejects_even_with_a_valid_one() -> None:
    headers = {"authorization": (f"Bearer {token()}",)}
    result = auth().authenticate(headers, f"access_token={token(exp=NOW - 1000)}", now=NOW)
    assert not result.ok


def test_default_locations_include_access_token_param() -> None:
    result = auth().authenticate({}, f"x=1&access_token={token()}", now=NOW)
    assert result.ok
    assert result.principal == f"{ISS}/alice"
    assert result.remove_headers == ()


def test_custom_header_and_param_locations_replace_defaults() -> None:
    custom = auth(from_headers=(("x-jwt", "Token "),), from_params=("jwt",))
    assert custom.authenticate({"x-jwt": (f"Token {token()}",)}, "", now=NOW).principal
    assert custom.authenticate({}, f"jwt={token()}", now=NOW).principal
    # the default Authorization header is no longer read
    assert custom.authenticate(bearer(token()), "", now=NOW).principal is None


def test_output_payload_claims_and_forwarding() -> None:
    t = token(groups=["a"], tenant="acme")
    result = auth(
        output_payload_to_header="x-jwt-payload",
        output_claim_to_headers=(("x-tenant", "tenant"),),
        forward_original_token=True,
    ).authenticate(bearer(t), "", now=NOW)
    assert result.ok
    assert dict(result.set_headers) == {"x-jwt-payload": t.split(".")[1], "x-tenant": "acme"}
    assert result.remove_headers == ()
    assert result.claims["groups"] == ["a"]


def test_uri_rule_rejects_until_jwks_is_fetched() -> None:
    uri = "https://issuer.example/jwks.json"
    pending = JwtAuthenticator([JwtRule(issuer=ISS, jwks_uri=uri)])
    assert pending.jwks_uris == (uri,)
    assert not pending.authenticate(bearer(token()), "", now=NOW).ok
    ready = pending.with_jwks(uri, JWKS)
    assert ready.authenticate(bearer(token()), "", now=NOW).ok
    assert ready.with_jwks(uri, JWKS).authenticate(bearer(token("ES256")), "", now=NOW).ok


def test_bad_jwks_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no usable public keys"):
        parse_jwks('{"keys": []}', where="inline")
    with pytest.raises(ConfigError, match="invalid JWKS"):
        parse_jwks("{", where="inline")


def test_cached_signature_still_checks_expiry() -> None:
    authenticator = auth()
    t = token(exp=NOW + 10)
    assert authenticator.authenticate(bearer(t), "", now=NOW).ok
    assert authenticator.authenticate(bearer(t), "", now=NOW + 5).ok
    assert not authenticator.authenticate(bearer(t), "", now=NOW + 10 + CLOCK_SKEW_S + 1).ok
