"""The downstream driver's HTTP version and keep-alive decision.

``on_headers_complete`` skips ``get_http_version()`` (a str built per call) when
llhttp says keep-alive and the request has no Connection field: only a minor
version above 0 is kept alive then. These cases run that fast path and the slow
one (Connection present, or not kept alive) on the real driver and httptools.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.clock import ManualClock
from meshlet.config.bootstrap import Limits, Timeouts
from meshlet.proxy.driver_down import DownstreamConnection
from meshlet.proxy.exchange import Exchange, Listener, RequestIds
from meshlet.telemetry.metrics import GoldenMetrics


class _Transport:
    """The transport surface the driver touches; nothing is sent anywhere."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 15001)}.get(
            key, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Recorder:
    """A router that only keeps the exchanges it is asked to start."""

    def __init__(self) -> None:
        self.started: list[Exchange] = []

    def start(self, ex: Exchange) -> None:
        self.started.append(ex)

    def finish(self, ex: Exchange) -> None:
        pass


def _parsed(request: bytes) -> Exchange:
    router = _Recorder()
    clock = ManualClock()
    listener = Listener(
        side="inbound",
        router=router,
        metrics=GoldenMetrics(),
        monotonic=clock.monotonic,
        limits=Limits(),
        timeouts=Timeouts(),
        ids=RequestIds(),
    )
    conn = DownstreamConnection(listener)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.data_received(request)
    assert len(router.started) == 1
    return router.started[0]


@pytest.mark.parametrize(
    ("request_bytes", "version", "keep_alive"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", b"1.1", True, id="1.1-fast-path"),
        pytest.param(b"GET / HTTP/1.0\r\nhost: a\r\n\r\n", b"1.0", False, id="1.0-no-connection"),
        pytest.param(
            b"GET / HTTP/1.0\r\nhost: a\r\nconnection: keep-alive\r\n\r\n",
            b"1.0",
            True,
            id="1.0-keep-alive",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
            b"1.1",
            False,
            id="1.1-close",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: keep-alive\r\n\r\n",
            b"1.1",
            True,
            id="1.1-keep-alive-named",
        ),
    ],
)
def test_version_and_keep_alive(request_bytes: bytes, version: bytes, keep_alive: bool) -> None:
    ex = _parsed(request_bytes)
    assert ex.version == version
    assert ex.keep_alive is keep_alive
