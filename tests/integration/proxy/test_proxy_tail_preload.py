"""A sidecar's first upstream connection imports nothing mid-request.

uvloop's ``sock_connect`` runs the host through the ``idna`` codec, and that
codec's first use imports three modules (12-34 ms on a loaded machine) inside
the first request. ``preload_connect_path`` does it at start-up instead. Each
case runs in a fresh interpreter, where nothing has imported the codec yet.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import asyncio, socket, sys
import uvloop
from meshlet.proxy import runner

LAZY = ("encodings.idna", "stringprep", "unicodedata")
assert not any(m in sys.modules for m in LAZY), "already imported before the probe"
if sys.argv[1] == "preload":
    runner.preload_connect_path()

async def main() -> list[str]:
    listening = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setblocking(False)
    before = set(sys.modules)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(client, listening.getsockname()), 10
        )
    finally:
        client.close()
        listening.close()
    return sorted(set(sys.modules) - before)

print(",".join(uvloop.run(main())))
"""


def _imported_by_first_connect(mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize(
    ("mode", "lazy"),
    [
        pytest.param("cold", True, id="without-preload-imports-idna"),
        pytest.param("preload", False, id="with-preload-imports-nothing"),
    ],
)
def test_first_connect_imports(mode: str, lazy: bool) -> None:
    imported = _imported_by_first_connect(mode)
    assert ("encodings.idna" in imported) is lazy
    if not lazy:
        assert imported == []
