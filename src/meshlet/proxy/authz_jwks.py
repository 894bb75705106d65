"""Remote JWT keys for the policy gate: ``jwksUri`` documents and OpenID
discovery, fetched off the request path, cached and refreshed.

Istio's behaviour, kept here: keys are refreshed every 20 minutes; a failed fetch
keeps the keys already held (or none: that issuer's tokens get 401, never a
pass) and is retried in the background after 30 s, never once per request. The
first request after start waits for the first fetch, so a sidecar that just
started does not reject good tokens for lack of keys it is about to have.

OpenID discovery (a rule with neither ``jwks`` nor ``jwksUri``) reads
``<issuer>/.well-known/openid-configuration`` and then its ``jwks_uri``. Both URLs
must be ``https://`` (or ``http://`` on a loopback address): discovery follows a
URL no operator wrote down, so it is only followed over verified TLS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterable

from meshlet.clock import Clock
from meshlet.config.istio_security import secure_or_loopback
from meshlet.errors import ConfigError
from meshlet.policy.jwt import JwtAuthenticator, key_source
from meshlet.proxy.authz_http import FetchError, http_get, trust_context

logger = logging.getLogger(__name__)

# Istio refreshes jwksUri keys every 20 minutes (PILOT_JWT_PUB_KEY_REFRESH_INTERVAL).
JWKS_REFRESH_S = 20 * 60.0
# After a failed fetch (keys kept, or none yet: tokens of that issuer get 401).
JWKS_RETRY_S = 30.0


class JwksKeys:
    """The authenticator of one gate and the remote key documents it needs.

    ``authenticator`` is swapped by reference each time a document loads; the
    gate reads it per request, so a request sees either the old or the new keys.
    """

    __slots__ = (
        "_lock",
        "_timeouts",
        "_tls",
        "authenticator",
        "fetched",
        "refreshing",
    )

    def __init__(
        self,
        authenticator: JwtAuthenticator,
        *,
        extra_root_ca: str | None,
        preloaded: Iterable[str] = (),
    ) -> None:
        """``preloaded``: sources already read (``file://``), never fetched.
        Raises ConfigError when ``extra_root_ca`` is not usable PEM."""
        self.authenticator = authenticator
        # source -> monotonic time of its last fetch attempt
        self.fetched: dict[str, float] = dict.fromkeys(preloaded, float("inf"))
        self.refreshing = False
        self._lock: asyncio.Lock | None = None
        self._timeouts = {
            source: max(r.timeout_s for r in authenticator.rules if key_source(r) == source)
            for source in authenticator.jwks_uris
        }
        self._tls: ssl.SSLContext | None = None
        remote = [s for s in authenticator.jwks_uris if s not in self.fetched]
        if any(s.startswith("https://") for s in remote) or authenticator.discovery_urls:
            try:  # built once, at start: a bad extra root fails the load, not a request
                self._tls = trust_context(extra_root_ca)
            except ssl.SSLError as exc:
                raise ConfigError(f"JwksResolver extraRootCA: not usable: {exc}") from exc

    @property
    def first_fetch_pending(self) -> bool:
        """True until every source has been tried once."""
        return len(self.fetched) < len(self.authenticator.jwks_uris)

    def maybe_refresh(self, clock: Clock) -> None:
        """Start a background refresh when a source is due; never waits."""
        if self.refreshing or not self.fetched:
            return
        now = clock.monotonic()
        if all(now - t < JWKS_REFRESH_S for t in self.fetched.values()):
            return
        self.refreshing = True
        task = asyncio.get_running_loop().create_task(self.fetch(clock, only_missing=False))
        task.add_done_callback(self._refreshed)

    def _refreshed(self, _task: asyncio.Task[None]) -> None:
        self.refreshing = False

    async def fetch(self, clock: Clock, *, only_missing: bool) -> None:
        """Fetch the sources that are due (or, with ``only_missing``, never tried)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            for source in self.authenticator.jwks_uris:
                last = self.fetched.get(source)
                if last == float("inf") or (only_missing and last is not None):
                    continue
                now = clock.monotonic()
                try:
                    text = await asyncio.wait_for(
                        self._document(source), timeout=self._timeouts[source]
                    )
                    self.authenticator = self.authenticator.with_jwks(source, text)
                    logger.info("jwks_loaded", extra={"uri": source})
                    self.fetched[source] = now
                except (OSError, TimeoutError, ValueError, ConfigError) as exc:
                    # ssl.SSLError (a failed verification) is an OSError: fail closed
                    logger.warning("jwks_fetch_failed", extra={"uri": source, "error": str(exc)})
                    self.fetched[source] = now - JWKS_REFRESH_S + JWKS_RETRY_S

    async def _document(self, source: str) -> str:
        if source not in self.authenticator.discovery_urls:
            return await http_get(source, tls=self._tls)
        config = json.loads(await http_get(source, tls=self._tls))
        jwks_uri = config.get("jwks_uri") if isinstance(config, dict) else None
        if not isinstance(jwks_uri, str) or not secure_or_loopback(jwks_uri):
            raise FetchError(f"{source}: jwks_uri must be an https:// URL, got {jwks_uri!r}")
        return await http_get(jwks_uri, tls=self._tls)
