"""Join tokens: how a workload with no certificate yet proves who it is, once.

A join token is an ES256 JWT (RFC 7519, RFC 7518 §3.4) signed by the CA's
issuer key and bound to one SPIFFE ID (``sub``). It is short-lived (10 minutes
by default, SPIRE's join-token default) and single-use: the verifier records
each token id (``jti``) in a ``TokenLedger`` until the token would have expired
anyway, so a replay inside the validity window is refused and the ledger never
grows past the tokens issued in the last ``ttl``.

Time is a parameter: PyJWT's own clock checks are switched off and ``exp`` is
compared with the ``now`` the caller passes, so tests use ``ManualClock``.
"""

from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from meshlet.errors import IdentityError
from meshlet.identity.spiffeid import SpiffeId

__all__ = [
    "DEFAULT_TOKEN_TTL_S",
    "JOIN_AUDIENCE",
    "JoinClaims",
    "TokenLedger",
    "issue_join_token",
    "verify_join_token",
]

DEFAULT_TOKEN_TTL_S = 600.0  # 10 min: SPIRE's join-token default; long enough to boot a pod
MAX_TOKEN_TTL_S = 7 * 24 * 3600.0  # a week: past this a "join token" is a standing password
JOIN_AUDIENCE = "meshlet-join"  # keeps a join token from being accepted anywhere else
_ALGORITHM = "ES256"


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinClaims:
    """What a verified join token proves."""

    spiffe_id: SpiffeId
    token_id: str
    issued_at: float
    expires_at: float


def issue_join_token(
    *,
    key: ec.EllipticCurvePrivateKey,
    key_id: str,
    spiffe_id: SpiffeId,
    trust_domain: str,
    now: float,
    ttl_s: float = DEFAULT_TOKEN_TTL_S,
) -> str:
    """A signed join token for ``spiffe_id``, valid from ``now`` for ``ttl_s`` seconds."""
    if not spiffe_id.member_of(trust_domain):
        raise IdentityError(
            f"{spiffe_id} is not in trust domain {trust_domain!r}; this CA cannot vouch for it"
        )
    if not spiffe_id.path:
        raise IdentityError(f"{spiffe_id} has no path; a workload ID needs one")
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise IdentityError(f"join token ttl must be in (0, {MAX_TOKEN_TTL_S:g}] s, got {ttl_s:g}")
    claims = {
        "iss": f"spiffe://{trust_domain}",
        "sub": str(spiffe_id),
        "aud": JOIN_AUDIENCE,
        "iat": int(now),
        "exp": int(now + ttl_s),
        "jti": secrets.token_hex(16),
    }
    return jwt.encode(claims, key, algorithm=_ALGORITHM, headers={"kid": key_id})


def verify_join_token(
    token: str,
    *,
    public_key: ec.EllipticCurvePublicKey,
    trust_domain: str,
    now: float,
    ledger: TokenLedger,
) -> JoinClaims:
    """Check ``token`` and burn it in ``ledger``; return the identity it proves.

    Checks, each refusal an ``IdentityError`` naming it: well-formed JWT, issued
    for this trust domain, signature by ``public_key``, audience, not expired at
    ``now``, subject a SPIFFE ID in the trust domain, and not used before.
    """
    unverified = _peek(token)
    issuer = unverified.get("iss")
    if issuer != f"spiffe://{trust_domain}":
        raise IdentityError(
            f"join token was issued for {issuer!r}, not this trust domain ({trust_domain!r})"
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[_ALGORITHM],
            audience=JOIN_AUDIENCE,
            issuer=f"spiffe://{trust_domain}",
            options={
                "verify_exp": False,  # checked below against the caller's clock
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["iss", "sub", "aud", "iat", "exp", "jti"],
            },
        )
    except jwt.InvalidSignatureError:
        raise IdentityError("join token signature is not valid for this CA") from None
    except jwt.InvalidTokenError as exc:
        raise IdentityError(f"join token is not acceptable: {exc}") from None
    expires_at = _number(claims, "exp")
    issued_at = _number(claims, "iat")
    if now >= expires_at:
        raise IdentityError(f"join token expired {now - expires_at:.0f} s ago")
    spiffe_id = SpiffeId.parse(str(claims["sub"]))
    if not spiffe_id.member_of(trust_domain):
        raise IdentityError(f"join token subject {spiffe_id} is not in {trust_domain!r}")
    token_id = str(claims["jti"])
    ledger.consume(token_id, expires_at=expires_at, now=now)
    return JoinClaims(
        spiffe_id=spiffe_id, token_id=token_id, issued_at=issued_at, expires_at=expires_at
    )


def _peek(token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise IdentityError(f"join token is malformed: {exc}") from None
    return claims


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IdentityError(f"join token claim {name!r} is not a number")
    return float(value)


class TokenLedger:
    """The set of join tokens already used, each kept until it would have expired.

    The caller owns it (the control plane keeps one per CA) so verification
    stays pure and testable; entries past their expiry are dropped on each
    ``consume`` because an expired token is refused before the ledger is asked.
    """

    __slots__ = ("_expiry", "_used")

    def __init__(self) -> None:
        self._used: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # min-heap: pruning is O(log n) per token

    def consume(self, token_id: str, *, expires_at: float, now: float) -> None:
        """Record ``token_id`` as used; raise ``IdentityError`` if it already was."""
        self.prune(now)
        if token_id in self._used:
            raise IdentityError("join token was already used (tokens are single-use)")
        self._used[token_id] = expires_at
        heapq.heappush(self._expiry, (expires_at, token_id))

    def prune(self, now: float) -> None:
        """Forget tokens that have expired: they are refused before the ledger is asked."""
        while self._expiry and self._expiry[0][0] <= now:
            _, token_id = heapq.heappop(self._expiry)
            self._used.pop(token_id, None)

    def __len__(self) -> int:
        return len(self._used)

    def __contains__(self, token_id: object) -> bool:
        return token_id in self._used
