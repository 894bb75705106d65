"""The inbound TLS context sends no session tickets (nobody resumes; each costs CPU).

In-memory handshakes (``ssl.MemoryBIO``): no sockets, deterministic.
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


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLObject:
    """Run a full mTLS handshake in memory; return the client end after it has
    read everything the server sent (session tickets arrive after the handshake)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):  # TLS 1.3 with client certificates needs two flights each way
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()) and not c_out.pending and not s_out.pending:
            break
    assert all(done.values()), "BUG: the in-memory handshake did not finish"
    server.write(b"x")  # application data after any tickets, so the client reads past them
    c_in.write(s_out.read())
    assert client.read(1) == b"x"
    return client


def test_inbound_context_issues_no_session_ticket(
    identities: tuple[LoadedIdentity, LoadedIdentity],
) -> None:
    server, client = identities
    end = _handshake(server.server, client.client)
    assert end.version() == "TLSv1.3"
    assert end.session is None or not end.session.has_ticket
    assert server.server.num_tickets == 0


def test_default_context_would_issue_one(
    identities: tuple[LoadedIdentity, LoadedIdentity],
) -> None:
    """The check above can fail: with OpenSSL's default the client holds a ticket."""
    server, client = identities
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    default.minimum_version = ssl.TLSVersion.TLSv1_3
    default.verify_mode = ssl.CERT_REQUIRED
    default.load_cert_chain(str(server.cert_path), str(server.cert_path.with_name("key.pem")))
    default.load_verify_locations(cafile=str(server.cert_path.with_name("bundle.pem")))
    end = _handshake(default, client.client)
    assert end.session is not None
    assert end.session.has_ticket
