"""Waiting for processes the runner started: announcements, readiness, ports.

Every wait is bounded and watches its process: a process that exits while we
wait is reported at once with the tail of its output, not after a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from meshlet.errors import ConfigError, MeshError, UpstreamError
from meshlet.mesh.ports import looks_like_port_clash
from meshlet.mesh.probe import http_get
from meshlet.mesh.supervisor import Supervised


class PortClash(MeshError):
    """A picked port was taken before its process bound it; start over."""


async def wait_announced(process: Supervised, announced: asyncio.Event, timeout_s: float) -> None:
    """Until ``announced`` is set (the process printed its ready line); an exit
    first is a ConfigError with its output, or PortClash if a port was taken."""
    exited = asyncio.create_task(process.wait_exit())
    ready = asyncio.create_task(announced.wait())
    done, _ = await asyncio.wait(
        {exited, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
    )
    ready.cancel()
    if exited in done:
        output = "\n".join(process.tail)
        if looks_like_port_clash(output):
            raise PortClash(f"{process.spec.name}: {output.splitlines()[-1:]}")
        raise ConfigError(
            f"{process.spec.name} exited with status {exited.result()} while "
            f"starting:\n{indent(output)}"
        )
    exited.cancel()
    if not done:
        raise ConfigError(
            f"{process.spec.name} did not announce readiness in "
            f"{timeout_s:.0f}s; log: {process.spec.log_path}"
        )


async def http_ok(host: str, port: int, path: str) -> bool:
    try:
        status, _ = await http_get(host, port, path, timeout_s=1.0)
    except UpstreamError:
        return False
    return 200 <= status < 300


async def port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def until(
    probe: Callable[[], Awaitable[bool]], process: Supervised, timeout_s: float, what: str
) -> None:
    """Poll ``probe`` until it is true; fail early if the process exits meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.02
    while True:
        if await probe():
            return
        if not process.running:
            code = await process.wait_exit()
            raise ConfigError(
                f"{process.spec.name} exited with status {code} before passing "
                f"{what}:\n{indent(chr(10).join(process.tail))}"
            )
        if loop.time() > deadline:
            raise ConfigError(
                f"{process.spec.name} did not pass {what} in {timeout_s:.0f}s; "
                f"log: {process.spec.log_path}"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def indent(text: str) -> str:
    return "\n".join("    " + line for line in (text.splitlines() or ["(no output)"]))
