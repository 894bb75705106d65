"""``python -m meshlet.workloads.frontend``: a client workload that calls a model.

The demo's ``frontend`` (and, with another identity, its ``intruder``): it sends
KServe v2 infer requests carrying base64 224x224 RGB images (the seeds' load
shape) at a steady rate through ``HTTP_PROXY`` (its sidecar), and prints one
summary line per period: counts by status and by ``x-model-version``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np

from meshlet.workloads.client import HttpClient
from meshlet.workloads.model import IMAGE_SIDE


def infer_body(*, batch: int = 1, side: int = IMAGE_SIDE, seed: int = 0) -> bytes:
    """A KServe v2 infer request with ``batch`` random base64 RGB images."""
    rng = np.random.default_rng(seed)
    images = [
        base64.b64encode(rng.integers(0, 256, side * side * 3, dtype=np.uint8).tobytes()).decode()
        for _ in range(batch)
    ]
    tensor = {"name": "image", "shape": [batch], "datatype": "BYTES", "data": images}
    return json.dumps({"inputs": [tensor]}).encode()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m meshlet.workloads.frontend",
        description="Call a model server at a steady rate.",
    )
    p.add_argument(
        "--proxy",
        default=os.environ.get("HTTP_PROXY", ""),
        help="the sidecar's outbound listener (default: $HTTP_PROXY)",
    )
    p.add_argument("--target", default="http://inference", help="service base URL")
    p.add_argument("--model", default="resnet-small", help="KServe model name")
    p.add_argument("--rate", type=float, default=2.0, help="requests per second")
    p.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    p.add_argument("--batch", type=int, default=1, help="images per request")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra request header (repeatable)",
    )
    p.add_argument("--name", default="frontend", help="prefix of the summary lines")
    p.add_argument(
        "--report-every", type=float, default=10.0, metavar="SECONDS", help="summary line period"
    )
    return p


async def run(args: argparse.Namespace) -> int:
    if not args.proxy:
        print(f"{args.name}: error: no --proxy and no HTTP_PROXY", file=sys.stderr)
        return 2
    headers = {"content-type": "application/json"}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = infer_body(batch=args.batch)
    url = f"{args.target.rstrip('/')}/v2/models/{args.model}/infer"
    client = HttpClient(args.proxy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    statuses: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    sent = 0
    next_report = loop.time() + args.report_every
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    while not stop.is_set() and (args.count == 0 or sent < args.count):
        reply = await client.request("POST", url, headers=headers, body=body)
        sent += 1
        statuses[str(reply.status or reply.error)] += 1
        versions[reply.headers.get("x-model-version", "-")] += 1
        if loop.time() >= next_report:
            print(
                f"{args.name}: sent={sent} status={dict(statuses)} versions={dict(versions)}",
                flush=True,
            )
            next_report = loop.time() + args.report_every
        if period:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
    await client.close()
    print(
        f"{args.name}: done sent={sent} status={dict(statuses)} versions={dict(versions)}",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
