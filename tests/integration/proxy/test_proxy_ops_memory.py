"""mallopt at start-up: no mmap/munmap per TLS read in a real ``meshlet proxy``.

Without raising glibc's mmap threshold, uvloop's 256 KiB read buffer is mapped
and unmapped for every read on a TLS connection (measured here: one munmap per
request). The test counts those system calls with strace while 1,000 requests
pass through a proxy on four keep-alive mTLS connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.apps import echo_app
from tests.support.pki import client_context, issue, make_ca, spiffe
from tests.support.processes import PYTHON, inbound_bootstrap, write_bootstrap
from tests.support.waiting import STEP_TIMEOUT_S

from meshlet.proxy.memory import peak_rss_bytes, rss_bytes, tune_malloc

pytestmark = pytest.mark.integration

REQUESTS = 1000
CONNECTIONS = 4


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(
        ["strace", "-f", "-o", os.devnull, sys.executable, "-c", "pass"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def test_tune_malloc_applies_on_glibc_and_rss_is_readable() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt is glibc/Linux only")
    assert tune_malloc() is True
    assert 1 << 20 < rss_bytes() <= peak_rss_bytes()


async def _keepalive_client(host: str, port: int, ctx: ssl.SSLContext, count: int) -> None:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        for _ in range(count):
            writer.write(b"GET /m HTTP/1.1\r\nhost: app\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
    finally:
        writer.close()


def _syscalls(summary: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


@pytest.mark.skipif(not _strace_works(), reason="strace missing or ptrace not permitted here")
async def test_no_mmap_per_tls_read(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server = issue(ca, tmp_path / "server", spiffe("ml", "inference"))
    client = issue(ca, tmp_path / "client", spiffe("apps", "client"))
    out = tmp_path / "strace.txt"
    async with echo_app() as app:
        conf = inbound_bootstrap(server, app.port, admin=None)
        path = write_bootstrap(tmp_path / "proxy.yaml", conf)
        code = (
            "import sys; from meshlet.proxy.runner import run_proxy; "
            f"sys.exit(run_proxy({str(path)!r}))"
        )
        proc = await asyncio.create_subprocess_exec(
            "strace", "-f", "-c", "-o", str(out), "-e", "trace=mmap,munmap,read",
            PYTHON, "-c", code, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=STEP_TIMEOUT_S * 2)
            ready = json.loads(line)
            host, port = ready["inbound"].rsplit(":", 1)
            ctx = client_context(client)
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        _keepalive_client(host, int(port), ctx, REQUESTS // CONNECTIONS)
                        for _ in range(CONNECTIONS)
                    )
                ),
                timeout=60,
            )
            os.kill(ready["pid"], signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), timeout=STEP_TIMEOUT_S) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    counts = _syscalls(out.read_text())
    assert counts.get("read", 0) >= REQUESTS  # the proxy really did the TLS reads
    # Untuned: about one munmap (and one mmap) per request. Tuned: start-up only.
    assert counts.get("munmap", 0) < REQUESTS * 0.05, counts
