"""The inbound TLS context sends one session ticket, not OpenSSL's two.

Nobody resumes a session with a sidecar's pool, so tickets are work for both
ends; but the server's first bytes after the handshake must still go out (they
carry the ACK a client with Nagle on waits for). In-memory handshakes
(``ssl.MemoryBIO``): no sockets, deterministic.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from tests.support.pki import Pki, make_ca, spiffe

from meshlet.proxy.tls import LoadedIdentity, load_identity


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedIdentity, LoadedIdentity]:
    tmp: Path = tmp_path_factory.mktemp("tickets")
    pki = Pki(make_ca(tmp), tmp)
    server = load_identity(pki.files(spiffe("ml", "server"), "server"))
    client = load_identity(pki.files(spiffe("ml", "client"), "client"))
    return server, client


def _after_handshake_bytes(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> int:
    """Run a full mTLS handshake in memory; return how many bytes the server sent
    once it had the client's Finished (the session tickets, RFC 8446 §4.6.1)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    after = 0
    for _ in range(10):  # TLS 1.3 with client certificates: two flights each way
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
                after = s_out.pending  # written as the handshake completed
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            break
    assert client_done, "BUG: the in-memory handshake did not finish"
    assert server_done, "BUG: the in-memory handshake did not finish"
    assert client.version() == "TLSv1.3"
    return after


def _server_context(server: LoadedIdentity, tickets: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(server.cert_path), str(server.cert_path.with_name("key.pem")))
    ctx.load_verify_locations(cafile=str(server.cert_path.with_name("bundle.pem")))
    ctx.num_tickets = tickets
    return ctx


def test_inbound_context_sends_one_ticket(
    identities: tuple[LoadedIdentity, LoadedIdentity],
) -> None:
    server, client = identities
    assert server.server.num_tickets == 1
    ours = _after_handshake_bytes(server.server, client.client)
    none = _after_handshake_bytes(_server_context(server, 0), client.client)
    two = _after_handshake_bytes(_server_context(server, 2), client.client)
    assert none == 0  # the reference: nothing at all follows the handshake
    assert 0 < ours < two  # something goes out (the ACK rides on it), half of the default
