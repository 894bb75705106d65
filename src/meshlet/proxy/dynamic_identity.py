"""Dynamic mode's identity: the sidecar's own key, enrolment and renewal.

A P-256 key is made here and never leaves the state directory (0700 directory,
0600 key); a CSR for the SPIFFE ID the join token names is sent with the token,
and the signed chain and trust bundle come back. After a restart a still-valid
certificate in the state directory is reused (the token is single-use).
Renewal presents the current SVID as the TLS client certificate, at half-life
with jitter (``identity.renewal.Renewer``). A mixin of ``DynamicProxy``: the
state is the proxy's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

import jwt

from meshlet.errors import ConfigError, IdentityError, MeshError
from meshlet.identity.pemfiles import write_atomic
from meshlet.identity.renewal import Credential, Renewer
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.x509 import make_csr
from meshlet.proxy.control_client import ControlClient, error_text

if TYPE_CHECKING:
    from pathlib import Path

    from meshlet.clock import Clock
    from meshlet.proxy.dynamic_config import DynamicSettings

__all__ = ["SidecarIdentity"]

logger = logging.getLogger("meshlet.proxy.dynamic")  # the sidecar's events, one logger name


class SidecarIdentity:
    """Enrolment and renewal for ``DynamicProxy`` (a mixin: the state is the proxy's)."""

    if TYPE_CHECKING:
        settings: DynamicSettings
        clock: Clock
        server: Any
        client: ControlClient | None
        renewer: Renewer
        credential: Credential | None
        cert_path: Path
        key_path: Path
        bundle_path: Path

    def _prepare_state_dir(self) -> None:
        state = self.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)  # the key lives here: nobody else may list or read it

    def _requested_id(self) -> SpiffeId:
        if self.credential is not None:
            return self.credential.spiffe_id
        if self.settings.token is None:
            raise ConfigError("--token is required for the first start (no certificate yet)")
        try:
            sub = jwt.decode(self.settings.token, options={"verify_signature": False})["sub"]
        except (jwt.InvalidTokenError, KeyError) as exc:
            raise ConfigError(f"--token is not a meshlet join token: {exc}") from exc
        return SpiffeId.parse(str(sub))

    def _load_existing(self) -> None:
        """Reuse a still-valid certificate from an earlier run (tokens are single-use)."""
        try:
            cred = Credential.from_pem(self.cert_path.read_bytes(), self.key_path.read_bytes())
        except (OSError, IdentityError, ValueError):
            return
        if cred.valid_at(self.clock.wall()):
            self.credential = cred

    def _bundle_pem(self) -> bytes:
        """Once enrolled, the bundle the control plane sent (it follows root
        rotations); before, the one given on the command line."""
        enrolled = self.credential is not None and self.bundle_path.exists()
        path = (
            self.bundle_path if enrolled or self.settings.bundle is None else self.settings.bundle
        )
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot read the trust bundle ({exc.strerror}); pass --bundle"
            ) from exc

    async def _fetch_svid(self) -> None:
        """Enroll (join token) or renew (current SVID over mTLS); install the result."""
        assert self.client is not None, "BUG: no control client"
        # Its own connection: the watch connection may be held for a long poll.
        client = ControlClient(
            url=self.settings.control,
            bundle_pem=self._bundle_pem(),
            control_id=self.client.control_id,
            cert=(self.cert_path, self.key_path) if self.credential is not None else None,
        )
        spiffe_id = self._requested_id()
        csr_pem, key_pem = make_csr(spiffe_id)
        payload: dict[str, str] = {"csr": csr_pem.decode()}
        if self.credential is None and self.settings.token is not None:
            payload["token"] = self.settings.token
        try:
            status, body = await client.call("POST", "/v1/identity", payload)
        finally:
            client.reset()
        if status != 200:
            raise IdentityError(f"control plane refused the CSR ({status}): {error_text(body)}")
        answer = json.loads(body)
        chain = answer["cert_chain"].encode()
        cred = Credential.from_pem(chain, key_pem)
        write_atomic(self.key_path, key_pem, mode=0o600)
        write_atomic(self.cert_path, chain, mode=0o644)
        write_atomic(self.bundle_path, answer["bundle"].encode(), mode=0o644)
        self.credential = cred
        self.client.use(bundle_pem=answer["bundle"].encode(), cert=(self.cert_path, self.key_path))
        jitter = secrets.randbelow(1000) / 1000 * cred.lifetime_s * 0.1
        self.renewer.on_installed(cred, jitter_s=jitter)
        if self.server is not None:
            self.server.reload_identity()
        logger.info("svid_installed", extra={"spiffe_id": str(cred.spiffe_id)})

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self.renewer.next_attempt_at - self.clock.wall()))
            try:
                await self._fetch_svid()
            except (MeshError, OSError, TimeoutError, ValueError, KeyError) as exc:
                logger.warning("svid_renewal_failed", extra={"error": str(exc)})
                self.renewer.on_failure(now=self.clock.wall())
