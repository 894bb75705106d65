"""CPU µs per keep-alive exchange through the HTTP/1.1 codec, per adapter.

One exchange is what a sidecar's codecs do per proxied request with a 1 KiB
response: the server side parses a request and serializes the response, the
client side serializes the request and parses the response. Run:

    .venv/bin/python benchmarks/bench_http1.py [--exchanges N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from meshlet.http1.adapter import Adapter
from meshlet.http1.codec import ClientCodec, ServerCodec
from meshlet.http1.events import Data, EndOfMessage, Request, Response
from meshlet.http1.h11_adapter import ADAPTER as H11
from meshlet.http1.httptools_adapter import ADAPTER as HTTPTOOLS

REQUEST_HEADERS = [
    (b"host", b"inference.ml.svc.cluster.local"),
    (b"user-agent", b"python-httpx/0.27.0"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"content-type", b"application/json"),
    (b"x-request-id", b"5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"),
    (b"content-length", b"0"),
]
RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"1024"),
    (b"date", b"Sun, 22 Nov 2026 12:00:00 GMT"),
    (b"server", b"uvicorn"),
]
BODY = b"x" * 1024
REQUEST = Request(method=b"GET", target=b"/v2/models/resnet/ready", headers=REQUEST_HEADERS)
RESPONSE = Response(status=200, headers=RESPONSE_HEADERS)


def _wire() -> tuple[bytes, bytes]:
    client, server = ClientCodec(), ServerCodec()
    request = client.send(REQUEST) + client.send(EndOfMessage())
    server.feed(request)
    response = server.send(RESPONSE) + server.send(Data(BODY)) + server.send(EndOfMessage())
    return request, response


def server_side(adapter: Adapter, request: bytes, exchanges: int) -> float:
    """µs per exchange: parse the request, serialize the 1 KiB response."""
    codec = ServerCodec(adapter=adapter)
    end = EndOfMessage()
    body = Data(BODY)
    start = time.process_time()
    for _ in range(exchanges):
        codec.feed(request)
        codec.send(RESPONSE)
        codec.send(body)
        codec.send(end)
    return (time.process_time() - start) / exchanges * 1e6


def client_side(adapter: Adapter, response: bytes, exchanges: int) -> float:
    """µs per exchange: serialize the request, parse the 1 KiB response."""
    codec = ClientCodec(adapter=adapter)
    end = EndOfMessage()
    start = time.process_time()
    for _ in range(exchanges):
        codec.send(REQUEST)
        codec.send(end)
        codec.feed(response)
    return (time.process_time() - start) / exchanges * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    request, response = _wire()
    print(f"request {len(request)} B, response {len(response)} B on the wire")
    print(f"{'adapter':<10} {'side':<8} {'CPU µs/exchange (median)':>32} {'best':>8}")
    for adapter in (HTTPTOOLS, H11):
        # The reference adapter is ~10x slower; fewer exchanges keep the run short.
        exchanges = args.exchanges if adapter is HTTPTOOLS else max(args.exchanges // 10, 100)
        medians = []
        for side, run, wire in (
            ("server", server_side, request),
            ("client", client_side, response),
        ):
            gc.collect()
            figures = [run(adapter, wire, exchanges) for _ in range(args.rounds)]
            medians.append(statistics.median(figures))
            print(f"{adapter.name:<10} {side:<8} {medians[-1]:>32.2f} {min(figures):>8.2f}")
        # What one sidecar spends in the codec per proxied request: both sides.
        print(f"{adapter.name:<10} {'both':<8} {sum(medians):>32.2f}")


if __name__ == "__main__":
    main()
