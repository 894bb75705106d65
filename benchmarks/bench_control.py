"""Push latency: a config change reaching 100 connected watch clients.

Runs a ``ControlServer`` and N lightweight watch clients (real TLS 1.3 with a
client SVID, the same long poll + ACK as ``meshlet proxy --control``, but no
data plane) in one uvloop process on 127.0.0.1. Each round rewrites a routing
file in the config directory, which changes every client's snapshot, and stops
the clock when the last ACK has been answered. Two figures: from the moment the
server has validated the change (the push itself), and from the file write
(adding the directory poll). Goal (issue 6): under 1 s for 100 clients.

    .venv/bin/python benchmarks/bench_control.py [--clients 100] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlencode

import uvloop

from meshlet.control.server import DEFAULT_POLL_S, ControlServer
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.proxy.control_client import ControlClient

TD = "bench.local"

MESH = """\
trust_domain: bench.local
services:
  echo:
    workloads:
      - command: ["true"]
        port: 9
clients:
  frontend:
    command: ["true"]
"""


def routing(round_no: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: echo, namespace: default}}
        spec:
          hosts: [echo]
          http:
            - timeout: {round_no + 1}s
              route:
                - destination: {{host: echo}}
        """
    )


class Watcher:
    """One fake sidecar: watch, ACK, watch again."""

    def __init__(self, index: int, url: str, bundle: bytes, cert: tuple[Path, Path]) -> None:
        self.proxy_id = f"frontend-{index:04d}"
        self.client = ControlClient(
            url=url, bundle_pem=bundle, control_id=str(SpiffeId.control_plane(TD)), cert=cert
        )
        self.seen = ""
        self.versions: asyncio.Queue[str] = asyncio.Queue()

    async def run(self) -> None:
        while True:
            query = {"proxy": self.proxy_id, "workload": "frontend", "version": self.seen}
            status, body = await self.client.call(
                "GET", f"/v1/watch?{urlencode(query)}", timeout_s=60.0
            )
            if status != 200:
                continue
            self.seen = json.loads(body)["version"]
            ack = {"proxy": self.proxy_id, "version": self.seen, "ok": True}
            await self.client.call("POST", "/v1/ack", ack)
            self.versions.put_nowait(self.seen)


async def main(clients: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "config"
        config.mkdir()
        (config / "mesh.yaml").write_text(MESH)
        (config / "routes.yaml").write_text(routing(0))
        ca = CertificateAuthority.init(root / "ca", TD, now=time.time())
        ca.issue(SpiffeId.parse(f"spiffe://{TD}/ns/default/sa/frontend"), now=time.time()).write(
            root / "svid"
        )
        cert = (root / "svid" / "cert.pem", root / "svid" / "key.pem")
        server = ControlServer(config_dir=config, ca=ca, resync_grace_s=0.0)
        await server.start(socket.create_server(("127.0.0.1", 0), backlog=1024))
        assert server.address is not None
        detected: list[float] = []
        poll = server.poll_config

        async def timed_poll() -> bool:  # notes when the server saw the change
            changed = await poll()
            if changed:
                detected.append(time.perf_counter())
            return changed

        server.poll_config = timed_poll  # type: ignore[method-assign]
        url = f"https://127.0.0.1:{server.address[1]}"

        t0 = time.perf_counter()
        watchers = [Watcher(i, url, ca.bundle_pem(), cert) for i in range(clients)]
        tasks = [asyncio.create_task(w.run()) for w in watchers]
        await asyncio.wait_for(asyncio.gather(*(w.versions.get() for w in watchers)), 120.0)
        connect_s = time.perf_counter() - t0
        print(f"clients: {clients}, all connected, first snapshot ACKed in {connect_s:.3f} s")

        end_to_end, push = [], []
        for r in range(1, rounds + 1):
            detected.clear()
            start = time.perf_counter()
            (config / "routes.yaml").write_text(routing(r))
            # Each watcher queues the version once its ACK has been answered, so the
            # server has recorded every ACK when the last queue yields.
            got = await asyncio.wait_for(
                asyncio.gather(*(w.versions.get() for w in watchers)), 60.0
            )
            done = time.perf_counter()
            target = server.snapshot_for("frontend")
            assert target is not None
            assert set(got) == {target.version}, "a client ACKed a stale version"
            assert all(p.acked == target.version for p in server.registry.proxies())
            end_to_end.append(done - start)
            push.append(done - detected[0])
            await asyncio.sleep(0.3)  # let the next write land in a later mtime tick
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in watchers:
            w.client.reset()
        await server.close()

    for label, values in (
        ("validated change -> last ACK", push),
        (f"file written -> last ACK (poll every {DEFAULT_POLL_S} s)", end_to_end),
    ):
        ms = sorted(x * 1000 for x in values)
        print(
            f"{label}, {clients} clients, {rounds} rounds: median "
            f"{statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms "
            "(goal < 1000 ms)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(args.clients, args.rounds))
