"""Client-side SVID renewal: when to renew, when to retry, and the atomic swap.

Two small pure pieces; the driver that sleeps and calls the CA lives with the
I/O (``meshlet.proxy``) and is a loop of a few lines::

    while True:
        await asyncio.sleep(max(0.0, renewer.next_attempt_at - clock.wall()))
        try:
            cred = await fetch_svid()            # CSR over mTLS, or a join token
        except MeshError:
            renewer.on_failure(now=clock.wall())
            continue
        if store.install(cred, now=clock.wall()):
            renewer.on_installed(cred, jitter_s=rng.uniform(0, cred.lifetime_s * 0.1))

- ``Renewer`` renews at ``renew_fraction`` (half, ARCHITECTURE.md) of the
  lifetime plus the caller's jitter (so a fleet issued at once does not renew
  at once), and after a failure retries with exponential backoff, never
  waiting past half of the time the current certificate has left: retries get
  denser as expiry nears instead of sleeping through it.
- ``CredentialStore`` holds the (chain, key) pair as one immutable value and
  replaces it with one assignment, so a TLS context built from it never sees a
  new certificate with an old key. It refuses to replace a valid credential
  with an expired or older one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meshlet.errors import IdentityError
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.x509 import (
    load_pem_certificates,
    load_pem_private_key,
    spiffe_id_from_cert,
)

__all__ = ["Credential", "CredentialStore", "RenewalPolicy", "Renewer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """A workload's certificate chain and key, with the leaf's validity window."""

    spiffe_id: SpiffeId
    cert_chain_pem: bytes
    key_pem: bytes
    not_before: float
    not_after: float

    @classmethod
    def from_pem(cls, cert_chain_pem: bytes, key_pem: bytes) -> Credential:
        """Read a chain (leaf first) and its key; refuse a key that is not the leaf's."""
        leaf = load_pem_certificates(cert_chain_pem, what="certificate chain")[0]
        key = load_pem_private_key(key_pem, what="key")
        if key.public_key() != leaf.public_key():
            raise IdentityError("key does not match the leaf certificate")
        return cls(
            spiffe_id=spiffe_id_from_cert(leaf),
            cert_chain_pem=cert_chain_pem,
            key_pem=key_pem,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
        )

    @property
    def lifetime_s(self) -> float:
        return self.not_after - self.not_before

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewalPolicy:
    """How eagerly to renew and how patiently to retry."""

    renew_fraction: float = 0.5  # ARCHITECTURE.md; Istio and SPIRE also renew at 1/2 life
    max_fraction: float = 0.9  # jitter never pushes renewal past 90% of the lifetime
    initial_backoff_s: float = 1.0  # first retry soon: most failures are a CA restart
    max_backoff_s: float = 300.0  # 5 min: keeps a fleet from hammering a sick CA
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_fraction <= self.max_fraction < 1:
            raise ValueError("need 0 < renew_fraction <= max_fraction < 1")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be >= 1")


class Renewer:
    """Decides when the next renewal attempt is due. Feed it outcomes; ask it times."""

    __slots__ = ("_failures", "_next", "_not_after", "policy")

    def __init__(self, policy: RenewalPolicy | None = None) -> None:
        self.policy = policy or RenewalPolicy()
        self._next = -math.inf  # nothing installed: fetch at once
        self._not_after: float | None = None
        self._failures = 0

    @property
    def next_attempt_at(self) -> float:
        return self._next

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last success."""
        return self._failures

    def due(self, now: float) -> bool:
        return now >= self._next

    def on_installed(self, credential: Credential, *, jitter_s: float = 0.0) -> float:
        """A new credential is live; schedule its renewal and return the time."""
        if jitter_s < 0:
            raise ValueError(f"jitter_s must be >= 0, got {jitter_s}")
        p = self.policy
        lifetime = credential.lifetime_s
        at = credential.not_before + lifetime * p.renew_fraction + jitter_s
        self._next = min(at, credential.not_before + lifetime * p.max_fraction)
        self._not_after = credential.not_after
        self._failures = 0
        return self._next

    def on_failure(self, *, now: float) -> float:
        """An attempt failed; schedule the retry with backoff and return the time."""
        p = self.policy
        self._failures += 1
        backoff = min(
            p.initial_backoff_s * p.backoff_multiplier ** (self._failures - 1), p.max_backoff_s
        )
        if self._not_after is not None and now < self._not_after:
            # Never sleep through expiry: at most half the remaining time, but not
            # more often than the initial backoff.
            backoff = min(backoff, max((self._not_after - now) / 2, p.initial_backoff_s))
        self._next = now + backoff
        return self._next


class CredentialStore:
    """The current credential, replaced whole by one reference assignment."""

    __slots__ = ("_current",)

    def __init__(self, initial: Credential | None = None) -> None:
        self._current = initial

    @property
    def current(self) -> Credential | None:
        return self._current

    def install(self, credential: Credential, *, now: float) -> bool:
        """Make ``credential`` current if it is better; return whether it was installed.

        Refused (False): an expired or not-yet-valid credential while the current
        one is valid, or one that expires no later than the current one.
        """
        current = self._current
        if current is not None and current.valid_at(now):
            if not credential.valid_at(now) or credential.not_after <= current.not_after:
                return False
        elif credential.not_after <= now:
            return False
        self._current = credential  # the one assignment: chain and key move together
        return True

    def get(self, *, now: float) -> Credential:
        """The credential to serve; ``IdentityError`` if there is none valid."""
        current = self._current
        if current is None:
            raise IdentityError("no workload certificate yet")
        if now >= current.not_after:
            raise IdentityError(f"workload certificate for {current.spiffe_id} has expired")
        return current
