"""The one admin endpoint of a ``--workers N`` sidecar, served by the parent.

Envoy and Linkerd show one ``/stats``, one ``/ready`` per sidecar whatever
their concurrency, and Prometheus, kubelet probes and ``meshlet status`` expect
exactly that. Each worker still counts its own traffic in its own memory (the
request path stays a few integer additions, with no lock or shared page), and
keeps its own admin server, but on a private Unix socket only the parent
connects to. At each scrape the parent asks every live worker at once and
merges what they answer (``telemetry.exposition.WorkerMerge``: counters and
histograms summed, kept from a worker that stops answering so they never go
backwards).

    /ready             200 only when every worker is ready and none has exited
                       and the sidecar is not draining; else 503
    /live              200 while the parent's event loop runs
    /stats/prometheus, /metrics
                       the workers' metrics merged, plus the parent's own RSS,
                       ``meshlet_worker_requests_total`` and ``meshlet_workers_alive``
    /config_dump, /certs
                       worker 0's answer (every worker loads the same
                       configuration and identity files), or the next live one's
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from meshlet.proxy.admin import AdminHttp
from meshlet.proxy.memory import peak_rss_bytes, rss_bytes
from meshlet.telemetry.exposition import WorkerMerge

logger = logging.getLogger(__name__)

# A worker answers its admin between two event-loop turns, so milliseconds even
# under load; 5 s stays inside Prometheus' default 10 s scrape timeout, after
# which the worker's last answer is used instead.
WORKER_TIMEOUT_S = 5.0
_MAX_ANSWER_BYTES = 256 << 20  # 10,000 series x 3 histograms is about 60 MiB of text

_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_PROM = b"text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True, kw_only=True)
class WorkerLink:
    """How the parent reaches one worker's private admin, and whether it lives."""

    index: int
    pid: int
    address: str | bytes  # an abstract Unix socket name (autobound)
    alive: bool = True


class WorkersAdmin(AdminHttp):
    """The parent's admin server: fans each request out to the workers."""

    def __init__(self, links: list[WorkerLink]) -> None:
        super().__init__()
        self._links = {link.index: link for link in links}
        self._merge = WorkerMerge()
        self.routes.update({
            b"/ready": self._ready,
            b"/live": self._live,
            b"/stats/prometheus": self._prometheus,
            b"/metrics": self._prometheus,
            b"/config_dump": lambda: self._first(b"/config_dump"),
            b"/certs": lambda: self._first(b"/certs"),
        })  # fmt: skip

    def worker_exited(self, index: int) -> None:
        """Stop asking a worker that has exited; its last counters stay."""
        link = self._links.get(index)
        if link is not None:
            link.alive = False

    # -- endpoints --------------------------------------------------------------

    async def _ready(self) -> tuple[int, bytes, bytes]:
        links = list(self._links.values())
        if self.draining or not all(link.alive for link in links):
            return 503, _TEXT, b"NOT READY\n"
        answers = await asyncio.gather(*(ask(link, b"/ready") for link in links))
        if all(answer is not None and answer[0] == 200 for answer in answers):
            return 200, _TEXT, b"LIVE\n"
        return 503, _TEXT, b"NOT READY\n"

    def _live(self) -> tuple[int, bytes, bytes]:
        return 200, _TEXT, b"OK\n"

    async def _prometheus(self) -> tuple[int, bytes, bytes]:
        links = [link for link in self._links.values() if link.alive]
        answers = await asyncio.gather(*(ask(link, b"/stats/prometheus") for link in links))
        texts: dict[int, tuple[int, bytes] | None] = {}
        for link, answer in zip(links, answers, strict=True):
            ok = answer is not None and answer[0] == 200
            texts[link.index] = (link.pid, answer[1]) if answer is not None and ok else None
        return 200, _PROM, self._merge.merge(texts, extra=self._own_metrics(len(links)))

    async def _first(self, path: bytes) -> tuple[int, bytes, bytes]:
        for index in sorted(self._links):
            link = self._links[index]
            answer = await ask(link, path) if link.alive else None
            if answer is not None:
                return answer[0], _JSON, answer[1]
        return 503, _TEXT, b"no worker answered\n"

    def _own_metrics(self, alive: int) -> bytes:
        return (
            "# TYPE meshlet_process_resident_memory_bytes gauge\n"
            f'meshlet_process_resident_memory_bytes{{worker="parent"}} {rss_bytes()}\n'
            "# TYPE meshlet_process_peak_resident_memory_bytes gauge\n"
            f'meshlet_process_peak_resident_memory_bytes{{worker="parent"}} {peak_rss_bytes()}\n'
            "# HELP meshlet_workers_alive Worker processes running.\n"
            "# TYPE meshlet_workers_alive gauge\n"
            f"meshlet_workers_alive {alive}\n"
        ).encode()


async def ask(
    link: WorkerLink, path: bytes, timeout_s: float = WORKER_TIMEOUT_S
) -> tuple[int, bytes] | None:
    """GET ``path`` from a worker's private admin: (status, body), or None when
    the worker is gone or too slow (the caller decides what that means)."""
    try:
        return await asyncio.wait_for(_get(link.address, path), timeout_s)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        if link.alive:
            logger.warning(
                "worker_admin_unanswered",
                extra={"worker": link.index, "path": path.decode(), "error": repr(exc)},
            )
        return None


async def _get(address: str | bytes, path: bytes) -> tuple[int, bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n\r\n" % path)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length > _MAX_ANSWER_BYTES:
            raise ValueError(f"admin answer of {length} bytes")
        body = await reader.readexactly(length)
        return status, body
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
