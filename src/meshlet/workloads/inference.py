"""``python -m meshlet.workloads.inference``: run the reference model server.

    python -m meshlet.workloads.inference --port 8080 --model-version v1

It prints ``meshlet-inference: listening on http://HOST:PORT`` once the socket is
bound (``--port 0`` picks a free port; read it from that line) and
``meshlet-inference: ready`` once the model is loaded, and stops cleanly on
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from meshlet.errors import ConfigError
from meshlet.workloads.api import InferenceApp, Settings
from meshlet.workloads.model import ModelSpec
from meshlet.workloads.server import start_server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m meshlet.workloads.inference",
        description="Reference inference server: KServe v2 REST + OpenAI-compatible API.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free one")
    p.add_argument("--model-name", default="resnet-small", help="KServe model name")
    p.add_argument("--model-version", default="v1", help="sent back as x-model-version")
    p.add_argument(
        "--instance", default="", help="sent back as x-served-by (default NAME-VERSION@PORT)"
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "numpy"],
        help="image model implementation (auto: torch if installed)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="load weights from this file (torch state_dict or .npz)",
    )
    p.add_argument("--seed", type=int, default=0, help="weights and failure-draw seed")
    p.add_argument("--threads", type=int, default=1, help="model intra-op threads")
    p.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="share of inference requests answered 503 (0..1)",
    )
    p.add_argument(
        "--delay-ms", type=float, default=0.0, help="delay added to every inference request"
    )
    p.add_argument(
        "--token-interval-ms", type=float, default=5.0, help="time between streamed chat tokens"
    )
    return p


def settings_from(args: argparse.Namespace, port: int) -> Settings:
    if not 0.0 <= args.fail_rate <= 1.0:
        raise ConfigError(f"--fail-rate: must be in [0, 1], got {args.fail_rate}")
    if args.delay_ms < 0 or args.token_interval_ms < 0:
        raise ConfigError("--delay-ms and --token-interval-ms must not be negative")
    return Settings(
        model_name=args.model_name,
        model_version=args.model_version,
        instance=args.instance or f"{args.model_name}-{args.model_version}@{port}",
        fail_rate=args.fail_rate,
        delay_ms=args.delay_ms,
        token_interval_ms=args.token_interval_ms,
        seed=args.seed,
        model=ModelSpec(
            backend=args.backend, weights=args.weights, seed=args.seed, threads=args.threads
        ),
    )


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Bind first so the real port is known (and shown in x-served-by) with --port 0.
    try:
        sock = socket.create_server((args.host, args.port), backlog=1024, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from exc
    port = sock.getsockname()[1]
    try:
        app = InferenceApp(settings_from(args, port))
    except ConfigError:
        sock.close()
        raise
    server = await start_server(app, sock)
    print(f"meshlet-inference: listening on http://{args.host}:{port}", flush=True)
    load = loop.create_task(app.load())
    try:
        done, _ = await asyncio.wait(
            {load, loop.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if load in done:
            load.result()  # a ConfigError from a bad --weights file surfaces here
            print(
                f"meshlet-inference: ready backend={app.model.backend if app.model else '?'}",
                flush=True,
            )
            await stop.wait()
    finally:
        server.close()
        load.cancel()
        app.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency
        return asyncio.run(_guarded(args))
    return uvloop.run(_guarded(args))


async def _guarded(args: argparse.Namespace) -> int:
    try:
        return await serve(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"meshlet-inference: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
