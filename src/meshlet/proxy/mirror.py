"""Fire-and-forget shadow requests (VirtualService ``mirror``, HTTPRoute
``RequestMirror``).

A mirror must never slow or fail the caller: the copy is sent on its own
connection by a background task after the caller's request is complete and
already on its way, its response is read and thrown away, and its resources are
bounded: at most ``MAX_IN_FLIGHT`` copies at once per listener (more are
dropped and counted, as Envoy drops shadow requests it cannot send), each cut
after ``TIMEOUT_S``. The connection is mTLS with the same SPIFFE ID check as the
main path.
"""

from __future__ import annotations

import asyncio
import ssl

from meshlet.proxy.exchange import Listener
from meshlet.proxy.pool import EndpointPool
from meshlet.proxy.tls import peer_spiffe_id

__all__ = ["MAX_IN_FLIGHT", "TIMEOUT_S", "MirrorSender"]

# A shadow copy is worth little once late; 16 concurrent copies of a request that
# itself fits in the 64 KiB replay buffer is at most ~1 MiB of memory.
MAX_IN_FLIGHT = 16
TIMEOUT_S = 5.0


class MirrorSender:
    __slots__ = ("listener", "sent", "tasks")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    def send(self, pool: EndpointPool, head: bytes, body: list[bytes]) -> None:
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self.listener.metrics.upstream_error("mirror_dropped")
            return
        data = head + b"".join(body)
        task = asyncio.get_running_loop().create_task(self._run(pool, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, pool: EndpointPool, data: bytes) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(TIMEOUT_S):
                ctx = pool.ssl_context() if pool.ssl_context is not None else None
                reader, writer = await asyncio.open_connection(
                    pool.address.host,
                    pool.address.port,
                    ssl=ctx,
                    server_hostname="" if ctx is not None else None,
                )
                if ctx is not None and pool.identity is not None:
                    peer = peer_spiffe_id(writer.get_extra_info("ssl_object"))
                    if peer != pool.identity:
                        self.listener.metrics.upstream_error("mirror")
                        return
                writer.write(data)
                self.sent += 1
                while await reader.read(65536):
                    pass  # the shadow's answer is discarded
        except (OSError, TimeoutError, ssl.SSLError, EOFError):
            self.listener.metrics.upstream_error("mirror")
        finally:
            if writer is not None:
                writer.close()

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
