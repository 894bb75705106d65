"""Renewal under a ManualClock: half-life renewal, backoff after failures, never expired."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from meshlet.clock import ManualClock
from meshlet.errors import IdentityError
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.renewal import Credential, CredentialStore, RenewalPolicy, Renewer
from meshlet.identity.spiffeid import SpiffeId

T0 = 1_700_000_000.0
TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "default", "web")
TTL = 3600.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), TD, now=T0 - 10)


class FlakyCa:
    """A CA client whose availability the test controls: down during given windows."""

    def __init__(self, ca: CertificateAuthority, outages: list[tuple[float, float]]) -> None:
        self.ca = ca
        self.outages = outages
        self.calls: list[float] = []

    def fetch(self, now: float) -> Credential:
        self.calls.append(now)
        if any(start <= now < end for start, end in self.outages):
            raise IdentityError("CA unavailable")
        return self.ca.issue(WEB, now=now, ttl_s=TTL).to_credential()


def drive(
    clock: ManualClock, client: FlakyCa, until: float, *, jitter_s: float = 0.0
) -> tuple[CredentialStore, Renewer, list[float]]:
    """The driver loop from renewal.py's docstring, with the sleep replaced by advance().

    After every step it records whether a valid credential was being served.
    """
    store, renewer = CredentialStore(), Renewer()
    installs: list[float] = []
    for _ in range(10_000):  # bounded: a scheduling bug must fail, not hang
        if clock.wall() >= until:
            break
        wait = renewer.next_attempt_at - clock.wall()
        clock.advance(max(0.0, min(wait, until - clock.wall())))
        if not renewer.due(clock.wall()):
            continue
        now = clock.wall()
        try:
            cred = client.fetch(now)
        except IdentityError:
            renewer.on_failure(now=now)
            continue
        assert store.install(cred, now=now)
        renewer.on_installed(cred, jitter_s=jitter_s)
        installs.append(now)
    else:
        pytest.fail("driver did not reach the end time")
    return store, renewer, installs


def test_renews_at_half_life(ca: CertificateAuthority) -> None:
    clock = ManualClock(wall=T0)
    client = FlakyCa(ca, outages=[])
    _store, _renewer, installs = drive(clock, client, T0 + 3 * TTL)
    # Leaves are backdated 60 s for clock skew: lifetime TTL + 60, half of it
    # measured from not_before = install - 60.
    half_life_gap = (TTL + 60) / 2 - 60
    assert installs[0] == T0
    gaps = [b - a for a, b in itertools.pairwise(installs)]
    assert len(gaps) == int(3 * TTL // half_life_gap)
    assert gaps == pytest.approx([half_life_gap] * len(gaps))
    assert len(client.calls) == len(installs)  # no failed attempts, no extra ones


def test_renewal_time_is_half_life_plus_jitter(ca: CertificateAuthority) -> None:
    cred = ca.issue(WEB, now=T0, ttl_s=TTL).to_credential()
    renewer = Renewer()
    at = renewer.on_installed(cred, jitter_s=0.0)
    assert at == pytest.approx(cred.not_before + cred.lifetime_s / 2)
    assert not renewer.due(at - 1)
    assert renewer.due(at)
    assert renewer.on_installed(cred, jitter_s=100.0) == pytest.approx(at + 100.0)
    assert not renewer.due(at + 99.0)
    # Jitter can never push renewal past 90 % of the lifetime.
    assert renewer.on_installed(cred, jitter_s=10 * TTL) == pytest.approx(
        cred.not_before + 0.9 * cred.lifetime_s
    )


def test_failed_renewal_retries_with_exponential_backoff(ca: CertificateAuthority) -> None:
    cred = ca.issue(WEB, now=T0, ttl_s=TTL).to_credential()
    renewer = Renewer(RenewalPolicy(initial_backoff_s=1.0, max_backoff_s=60.0))
    now = renewer.on_installed(cred)
    delays = []
    for _ in range(9):
        nxt = renewer.on_failure(now=now)
        delays.append(nxt - now)
        now = nxt
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert renewer.failures == 9
    renewer.on_installed(cred)
    assert renewer.failures == 0


def test_backoff_never_sleeps_through_expiry(ca: CertificateAuthority) -> None:
    cred = ca.issue(WEB, now=T0, ttl_s=TTL).to_credential()
    renewer = Renewer(RenewalPolicy(initial_backoff_s=1.0, max_backoff_s=3600.0))
    renewer.on_installed(cred)
    now = cred.not_after - 100
    attempts = 0
    while now < cred.not_after and attempts < 100:
        nxt = renewer.on_failure(now=now)
        assert nxt - now <= max((cred.not_after - now) / 2, 1.0)
        now, attempts = nxt, attempts + 1
    # Attempts keep coming right up to expiry, at most 1 s apart at the end.
    assert 8 <= attempts < 100
    assert now <= cred.not_after + 1.0


def test_survives_an_outage_and_never_serves_an_expired_cert(ca: CertificateAuthority) -> None:
    clock = ManualClock(wall=T0)
    # The CA is down from just before the first renewal until 80 % of the lifetime.
    outage = (T0 + 1000, T0 + 0.8 * TTL)
    client = FlakyCa(ca, outages=[outage])
    served: list[bool] = []
    store, renewer = CredentialStore(), Renewer()
    end = T0 + 2 * TTL
    while clock.wall() < end:
        now = clock.wall()
        if renewer.due(now):
            try:
                cred = client.fetch(now)
            except IdentityError:
                renewer.on_failure(now=now)
            else:
                store.install(cred, now=now)
                renewer.on_installed(cred)
        served.append(store.get(now=now).valid_at(now))
        clock.advance(7.0)  # sample every 7 s of simulated time
    assert all(served)
    retries = [t for t in client.calls if outage[0] <= t < outage[1]]
    assert len(retries) >= 5
    assert client.calls[len(retries) + 1] >= outage[1]  # first success after the outage
    gaps = [b - a for a, b in itertools.pairwise(retries)]
    assert gaps[0] < gaps[-1]  # backoff grew


def test_when_the_ca_never_returns_the_cert_expires_and_get_says_so(
    ca: CertificateAuthority,
) -> None:
    cred = ca.issue(WEB, now=T0, ttl_s=TTL).to_credential()
    store = CredentialStore(cred)
    assert store.get(now=cred.not_after - 1) is cred
    with pytest.raises(IdentityError, match="expired"):
        store.get(now=cred.not_after)


def test_store_never_replaces_a_valid_cert_with_a_worse_one(ca: CertificateAuthority) -> None:
    old = ca.issue(WEB, now=T0, ttl_s=TTL).to_credential()
    newer = ca.issue(WEB, now=T0 + 100, ttl_s=TTL).to_credential()
    store = CredentialStore()
    with pytest.raises(IdentityError, match="no workload certificate"):
        store.get(now=T0)
    assert store.install(newer, now=T0 + 200)
    assert not store.install(old, now=T0 + 200)  # older
    assert store.current is newer
    assert not store.install(old, now=old.not_after + 1)  # expired
    assert store.current is newer
    assert store.install(old, now=T0 + 200) is False
    expired = CredentialStore(old)
    assert expired.install(newer, now=old.not_after + 1)  # replaces an expired one


def test_credential_from_pem_checks_the_key_matches(ca: CertificateAuthority) -> None:
    a = ca.issue(WEB, now=T0)
    b = ca.issue(WEB, now=T0)
    cred = Credential.from_pem(a.cert_chain_pem, a.key_pem)
    assert cred.spiffe_id == WEB
    assert cred.not_after == a.not_after
    with pytest.raises(IdentityError, match="does not match"):
        Credential.from_pem(a.cert_chain_pem, b.key_pem)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"renew_fraction": 0.0}, id="zero-fraction"),
        pytest.param({"renew_fraction": 0.95}, id="fraction-over-max"),
        pytest.param({"initial_backoff_s": 0.0}, id="zero-backoff"),
        pytest.param({"initial_backoff_s": 10.0, "max_backoff_s": 1.0}, id="max-below-initial"),
        pytest.param({"backoff_multiplier": 0.5}, id="shrinking-backoff"),
    ],
)
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"need|must"):
        RenewalPolicy(**kwargs)


def test_write_then_read_back(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = ca.issue(WEB, now=T0)
    issued.write(tmp_path)
    cred = Credential.from_pem(
        (tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes()
    )
    assert cred == issued.to_credential()
