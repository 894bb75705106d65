"""The generator's ``handshake`` mode: sequential new mTLS connections, timed.

Each connection is TCP connect + TLS 1.3 handshake with the client SVID, then
the server's URI SAN is checked; nothing is sent over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from time import perf_counter

from meshlet.bench.loadspec import NS, LoadResult, LoadSpec


def client_tls_context(spec: LoadSpec) -> ssl.SSLContext:
    """Verify the server against the bench CA and present the client SVID.

    Hostname checks are off because SVIDs carry only a URI SAN; the SPIFFE ID is
    compared after the handshake instead (``expect_server_uri``).
    """
    ctx = ssl.create_default_context(cafile=spec.ca_file)
    ctx.check_hostname = False
    if spec.cert_file and spec.key_file:
        ctx.load_cert_chain(spec.cert_file, spec.key_file)
    return ctx


async def run_handshakes(spec: LoadSpec) -> LoadResult:
    ctx = client_tls_context(spec)
    result = LoadResult(mode="handshake")
    start = perf_counter()
    for _ in range(spec.handshakes):
        if perf_counter() - start > spec.duration_s + spec.drain_s:
            break
        result.sent += 1
        t0 = perf_counter()
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(spec.host, spec.port, ssl=ctx), timeout=spec.drain_s
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            result.error(f"handshake failed: {exc!r}")
            continue
        elapsed = perf_counter() - t0
        if spec.expect_server_uri and not _has_uri(writer, spec.expect_server_uri):
            result.error(f"server is not {spec.expect_server_uri}")
        else:
            result.ok += 1
            result.latency.record(int(elapsed * NS))
        writer.close()
        # The peer may reset a connection that carried no request.
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
    result.elapsed_s = perf_counter() - start
    return result


def _has_uri(writer: asyncio.StreamWriter, uri: str) -> bool:
    cert = writer.get_extra_info("peercert") or {}
    return ("URI", uri) in cert.get("subjectAltName", ())
