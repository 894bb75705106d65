"""A one-shot raw HTTP/1.1 GET, optionally over TLS, with a deadline."""

from __future__ import annotations

import asyncio
import ssl

from tests.support.waiting import STEP_TIMEOUT_S


async def http_get(
    host: str, port: int, path: str = "/", *, ssl_ctx: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None, timeout_s: float = STEP_TIMEOUT_S,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One GET on a fresh connection; returns (status, headers, body)."""

    async def go() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx)
        try:
            fields = {"host": host, **(headers or {}), "connection": "close"}
            extra = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            writer.write(f"GET {path} HTTP/1.1\r\n{extra}\r\n".encode())
            await writer.drain()
            raw = await reader.read(-1)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs, body

    return await asyncio.wait_for(go(), timeout=timeout_s)
