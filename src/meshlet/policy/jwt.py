"""JWT request authentication with RequestAuthentication's semantics.

Istio's rules, which this module follows:

* a request with no token passes authentication with no request principal (an
  authorization policy decides whether that is acceptable);
* a request carrying a token that is malformed, signed by an unknown key, from
  an issuer no rule accepts, expired, not yet valid or for the wrong audience
  is rejected with 401, even if another token on it is valid;
* the request principal is ``<iss>/<sub>``.

Pure: keys come in as JWKS text (inline, read from a file, or fetched by the
proxy from ``jwksUri``), and ``now`` is a parameter. Only asymmetric algorithms
are accepted so a public key can never be used as an HMAC secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import jwt

from meshlet.config.istio_security import JwtRule
from meshlet.errors import ConfigError

if TYPE_CHECKING:
    from jwt.types import Options

# Envoy's jwt_authn default clock skew (clock_skew_seconds).
CLOCK_SKEW_S = 60.0
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Istio's default token locations when a rule names none.
_DEFAULT_HEADERS = (("authorization", "Bearer "),)
_DEFAULT_PARAMS = ("access_token",)
_MAX_VERIFIED = 4096  # cached signature checks per authenticator
_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,  # checked here against the ``now`` we are given
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
}


def parse_jwks(text: str, *, where: str) -> tuple[jwt.PyJWK, ...]:
    """The usable keys of a JWKS document; ConfigError when there are none."""
    try:
        data = json.loads(text)
        keys = [jwt.PyJWK(k) for k in data["keys"] if k.get("kty") != "oct"]
    except (ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
        raise ConfigError(f"{where}: invalid JWKS: {exc}") from exc
    if not keys:
        raise ConfigError(f"{where}: JWKS has no usable public keys")
    return tuple(keys)


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery 1.0 section 4: the issuer, without a trailing
    slash, plus ``/.well-known/openid-configuration`` (as Istio resolves it)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def key_source(rule: JwtRule) -> str:
    """Where a rule without inline ``jwks`` gets its keys: its ``jwksUri``, else
    its issuer's discovery document."""
    return rule.jwks_uri or discovery_url(rule.issuer)


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtResult:
    """The outcome of authentication. ``ok`` False means answer 401."""

    ok: bool
    reason: str = ""
    principal: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    audiences: tuple[str, ...] = ()
    presenter: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()


NO_TOKEN = JwtResult(ok=True, reason="no token")


@dataclass(frozen=True, slots=True)
class _Found:
    rule: int
    token: str
    # None: found in a query parameter or a cookie, which stay on the request as in
    # Envoy (only a token's own header is removed when it is not forwarded)
    header: str | None


def parse_cookies(values: Sequence[str]) -> dict[str, str]:
    """The ``Cookie`` header(s) as name -> value (RFC 6265 section 4.2.1: pairs
    split by ``;``, optional surrounding double quotes dropped). The first pair of a
    name wins, as in Envoy's cookie parser; names are case-sensitive."""
    out: dict[str, str] = {}
    for header in values:
        for pair in header.split(";"):
            name, eq, value = pair.strip().partition("=")
            if not eq or not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.setdefault(name.rstrip(), value)
    return out


class JwtAuthenticator:
    """The JWT rules of every RequestAuthentication applying to one workload."""

    __slots__ = ("_keys", "_texts", "_verified", "discovery_urls", "jwks_uris", "rules")

    def __init__(self, rules: Sequence[JwtRule], jwks_by_uri: Mapping[str, str] | None = None):
        """``jwks_by_uri`` holds the fetched JWKS of each rule without inline keys,
        by ``key_source(rule)``; a rule whose keys are not there yet rejects its
        tokens until ``with_jwks`` adds them."""
        self.rules = tuple(rules)
        # where the keys of rules without inline jwks come from: their jwksUri, or
        # the OpenID discovery URL of their issuer
        self.jwks_uris = tuple(sorted({key_source(r) for r in self.rules if r.jwks is None}))
        self.discovery_urls = frozenset(
            discovery_url(r.issuer) for r in self.rules if r.jwks is None and r.jwks_uri is None
        )
        fetched = dict(jwks_by_uri or {})
        self._texts = fetched
        # Signature checks cost tens of microseconds; clients resend the same token
        # for its whole life. Time and audience are still checked on every request.
        self._verified: dict[tuple[int, str], dict[str, Any]] = {}
        self._keys: list[tuple[jwt.PyJWK, ...]] = []
        for rule in self.rules:
            text = rule.jwks if rule.jwks is not None else fetched.get(key_source(rule))
            self._keys.append(parse_jwks(text, where=rule.issuer) if text is not None else ())

    def with_jwks(self, uri: str, text: str) -> JwtAuthenticator:
        """A copy with the JWKS at ``uri`` (re)loaded, to swap in by reference.
        Raises ConfigError (keeping this one usable) when ``text`` has no keys."""
        return JwtAuthenticator(self.rules, {**self._texts, uri: text})

    def _find(self, headers: Mapping[str, tuple[str, ...]], query: str) -> list[_Found]:
        # Envoy's order: a rule's headers, then its query parameters, then its cookies;
        # the defaults apply only to a rule that names no location at all.
        found: list[_Found] = []
        params: dict[str, list[str]] | None = None
        cookies: dict[str, str] | None = None
        for i, rule in enumerate(self.rules):
            defaults = not rule.from_headers and not rule.from_params and not rule.from_cookies
            for name, prefix in _DEFAULT_HEADERS if defaults else rule.from_headers:
                for value in headers.get(name, ()):
                    if value.startswith(prefix) and value[len(prefix) :].strip():
                        found.append(_Found(i, value[len(prefix) :].strip(), name))
            for param in _DEFAULT_PARAMS if defaults else rule.from_params:
                if params is None:
                    params = parse_qs(query, keep_blank_values=False) if query else {}
                for value in params.get(param, ()):
                    found.append(_Found(i, value, None))
            if rule.from_cookies:
                if cookies is None:
                    cookies = parse_cookies(headers.get("cookie", ()))
                for name in rule.from_cookies:
                    cookie = cookies.get(name)
                    if cookie:
                        found.append(_Found(i, cookie, None))
        return found

    def authenticate(
        self, headers: Mapping[str, tuple[str, ...]], query: str, *, now: float
    ) -> JwtResult:
        """Check every token on the request; ``headers`` keys are lowercase."""
        if not self.rules:
            return NO_TOKEN
        found = self._find(headers, query)
        if not found:
            return NO_TOKEN
        result: JwtResult | None = None
        remove: list[str] = []
        for token in dict.fromkeys(f.token for f in found):
            locations = [f for f in found if f.token == token]
            outcome = self._verify(token, locations, now)
            if not outcome.ok:
                return outcome
            result = result or outcome
            remove.extend(outcome.remove_headers)
        assert result is not None, "BUG: found tokens but verified none"
        return JwtResult(
            ok=True,
            reason=result.reason,
            principal=result.principal,
            claims=result.claims,
            audiences=result.audiences,
            presenter=result.presenter,
            set_headers=result.set_headers,
            remove_headers=tuple(dict.fromkeys(remove)),
        )

    def _verify(self, token: str, locations: Sequence[_Found], now: float) -> JwtResult:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return JwtResult(ok=False, reason="Jwt is not in the form of Header.Payload.Signature")
        issuer = unverified.get("iss")
        rules = [f.rule for f in locations if self.rules[f.rule].issuer == issuer]
        if not rules:
            return JwtResult(ok=False, reason="Jwt issuer is not configured")
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            return JwtResult(ok=False, reason=f"Jwt algorithm {algorithm!r} is not allowed")
        reason = "Jwks doesn't have key to match kid or alg from Jwt"
        for index in dict.fromkeys(rules):
            rule = self.rules[index]
            cached = self._verified.get((index, token))
            claims = cached or self._signed_claims(token, header, algorithm, self._keys[index])
            if claims is None:
                continue
            problem = _time_and_audience(claims, rule, now)
            if problem:
                reason = problem
                continue
            if cached is None:
                if len(self._verified) >= _MAX_VERIFIED:
                    self._verified.clear()
                self._verified[(index, token)] = claims
            return _success(token, claims, rule, locations, index)
        return JwtResult(ok=False, reason=reason)

    @staticmethod
    def _signed_claims(
        token: str, header: Mapping[str, Any], algorithm: str, keys: Sequence[jwt.PyJWK]
    ) -> dict[str, Any] | None:
        kid = header.get("kid")
        for key in keys:
            if kid is not None and key.key_id is not None and key.key_id != kid:
                continue
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key.key, algorithms=[algorithm], options=_DECODE_OPTIONS
                )
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            return claims
        return None


def _time_and_audience(claims: Mapping[str, Any], rule: JwtRule, now: float) -> str:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if exp is not None and (not isinstance(exp, int | float) or now > exp + CLOCK_SKEW_S):
        return "Jwt is expired"
    if nbf is not None and (not isinstance(nbf, int | float) or now + CLOCK_SKEW_S < nbf):
        return "Jwt not yet valid"
    if rule.audiences and not set(_audiences(claims)) & set(rule.audiences):
        return "Audiences in Jwt are not allowed"
    return ""


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list):
        return tuple(a for a in aud if isinstance(a, str))
    return ()


def _success(
    token: str, claims: Mapping[str, Any], rule: JwtRule, locations: Sequence[_Found], index: int
) -> JwtResult:
    set_headers: list[tuple[str, str]] = []
    if rule.output_payload_to_header:
        # Envoy forwards the token's own base64url payload segment.
        set_headers.append((rule.output_payload_to_header.lower(), token.split(".")[1]))
    for header_name, claim in rule.output_claim_to_headers:
        value = claims.get(claim)
        if isinstance(value, str | int | float | bool):
            set_headers.append(
                (header_name, str(value).lower() if isinstance(value, bool) else str(value))
            )
    remove: tuple[str, ...] = ()
    if not rule.forward_original_token:
        remove = tuple(f.header for f in locations if f.rule == index and f.header is not None)
    sub = claims.get("sub")
    azp = claims.get("azp")
    return JwtResult(
        ok=True,
        reason="verified",
        principal=f"{claims.get('iss')}/{sub if isinstance(sub, str) else ''}",
        claims=dict(claims),
        audiences=_audiences(claims),
        presenter=azp if isinstance(azp, str) else None,
        set_headers=tuple(set_headers),
        remove_headers=remove,
    )
