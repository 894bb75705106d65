"""x-forwarded-for and x-forwarded-client-cert lines made once per connection.

The drivers keep the no-client-value x-forwarded-for line and inbound's
x-forwarded-client-cert line per downstream connection; requests with and
without a client x-forwarded-for on the same keep-alive connection must each
get the right values (the cached line, then the rebuilt one, then the cached
one again).
"""

from __future__ import annotations

import json

import httpx
import pytest
from tests.support.sidecars import CLIENT_ID, SERVER_ID, Pair

pytestmark = pytest.mark.integration
T = 10.0


async def test_forwarded_lines_alternate_on_one_connection(pair: Pair) -> None:
    seen: list[dict[str, str]] = []
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        for xff in (None, "10.0.0.7", None):
            extra = {} if xff is None else {"x-forwarded-for": xff}
            r = await client.get("http://inference/headers", headers=extra)
            assert r.status_code == 200
            seen.append(dict(json.loads(r.text)["headers"]))
    assert [h["x-forwarded-for"] for h in seen] == [
        "127.0.0.1, 127.0.0.1",
        "10.0.0.7, 127.0.0.1, 127.0.0.1",
        "127.0.0.1, 127.0.0.1",
    ]
    for h in seen:
        assert h["x-forwarded-client-cert"] == f"By={SERVER_ID};URI={CLIENT_ID}"
    assert pair.app.connections == 1  # one inbound->app connection: the cache was reused
