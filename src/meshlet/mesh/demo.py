"""``python -m meshlet.mesh.demo`` (``make demo``): the seeds' scenario, end to end.

It starts ``examples/demo/mesh.yaml`` with the same runner as ``meshlet up`` (in a
fresh temporary state directory, so it never collides with a running mesh),
drives a bounded load through the ``frontend``'s and the ``intruder``'s sidecars
as those apps would, and prints a report: requests, success rate, the observed
version split, p50/p99, mTLS share, denials, and the audit log verified.

Every figure is measured in this run. Features this build's sidecar does not
have yet are named as not active, and their checks are skipped, never faked.
The exit status is 0 only when every active check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from meshlet.config.mesh import load_mesh
from meshlet.mesh.golden import counts_from
from meshlet.mesh.probe import http_get
from meshlet.mesh.runner import MeshRunner
from meshlet.mesh.up import inactive_features, replicas_table
from meshlet.telemetry.audit import verify
from meshlet.workloads.client import ClientReply, HttpClient
from meshlet.workloads.frontend import infer_body

DEFAULT_MESH = Path("examples/demo/mesh.yaml")
URL = "http://inference/v2/models/resnet-small/infer"
SMALL_BODY = infer_body(batch=1, side=48)  # ~9 KB: fits the 64 KiB retry buffer


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Results:
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def _locate(path: Path) -> Path:
    """The mesh file as given, else relative to the source checkout (make demo runs
    from the repository root, but `python -m` may run from anywhere)."""
    if path.exists():
        return path
    repo = Path(__file__).resolve().parents[3] / path
    return repo if repo.exists() else path


async def _drive(
    proxy: str, n: int, workers: int, headers: dict[str, str], tag: str, body: bytes
) -> list[tuple[str, ClientReply]]:
    """``n`` requests over ``workers`` keep-alive connections; ids name each one."""
    queue = list(range(n))
    out: list[tuple[str, ClientReply]] = []

    async def worker() -> None:
        client = HttpClient(proxy)
        try:
            while queue:
                rid = f"demo-{tag}-{queue.pop()}"
                reply = await client.request(
                    "POST",
                    URL,
                    body=body,
                    timeout_s=30.0,
                    headers={"content-type": "application/json", "x-request-id": rid, **headers},
                )
                out.append((rid, reply))
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return out


def _pcts(replies: list[ClientReply]) -> str:
    lat = sorted(r.latency_ms for r in replies)
    if not lat:
        return "no requests"
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms"


def _split(replies: list[ClientReply]) -> Counter[str]:
    return Counter(r.headers.get("x-model-version", "none") for r in replies if r.status == 200)


async def _scenario(runner: MeshRunner, res: Results, n: int) -> list[str]:
    by_name = {r.plan.name: r for r in runner.replicas}
    frontend = by_name["frontend-0"].plan.outbound_url
    intruder = by_name["intruder-0"].plan.outbound_url
    body = infer_body(batch=1)
    plain = await _drive(frontend, n, 4, {}, "f", body)
    pinned = await _drive(frontend, max(10, n // 8), 2, {"x-model-version": "v2"}, "p", body)
    denied = await _drive(intruder, 20, 1, {}, "i", body)
    # Bodies within the sidecar's 64 KiB retry buffer can be replayed; the seeds'
    # 224x224 images (~200 KB of base64) cannot, as with Envoy's buffer limit.
    small = [r for _, r in await _drive(frontend, n, 4, {}, "s", SMALL_BODY)]

    replies = [r for _, r in plain]
    ok = sum(r.status == 200 for r in replies)
    codes = Counter(str(r.status or r.error) for r in replies if r.status != 200)
    res.lines.append(
        f"frontend -> inference: {len(replies)} requests of one 224x224 image, success "
        f"{ok / len(replies):.1%}{f' (failed: {dict(codes)})' if codes else ''}, "
        f"{_pcts(replies)} (client side, through both sidecars)"
    )
    small_ok = sum(r.status == 200 for r in small)
    res.lines.append(
        f"frontend -> inference: {len(small)} requests of one 48x48 image (a retryable "
        f"body), success {small_ok / max(1, len(small)):.1%}, {_pcts(small)}"
    )
    if runner.features.routing:
        res.check(
            "retries hide injected 503s (small bodies) >= 99.5%",
            small_ok >= 0.995 * len(small),
            f"{small_ok}/{len(small)}",
        )
    res.check("frontend success rate >= 95%", ok / len(replies) >= 0.95, f"{ok}/{len(replies)}")
    split = _split(replies)
    total = sum(split.values()) or 1
    shares = ", ".join(f"{v} {c / total:.1%}" for v, c in sorted(split.items()))
    res.lines.append(f"version split without override ({total} answered): {shares}")
    pin = _split([r for _, r in pinned])
    res.lines.append(
        f"with x-model-version: v2 ({sum(pin.values())} answered): "
        + ", ".join(f"{v} {c}" for v, c in sorted(pin.items()))
    )
    if runner.features.routing:
        v2 = split.get("v2", 0) / total
        res.check(
            "canary split near 90/10", canary_share_plausible(v2, total), f"v2 share {v2:.1%}"
        )
        res.check("override pins v2", set(pin) == {"v2"}, str(dict(pin)))

    statuses = Counter(r.status for _, r in denied)
    res.lines.append(f"intruder -> inference: {len(denied)} requests, answers {dict(statuses)}")
    if runner.features.policies:
        res.check(
            "every intruder request denied (403)",
            statuses == Counter({403: len(denied)}),
            str(dict(statuses)),
        )
    await _mtls(runner, res)
    return [rid for rid, r in denied if r.status == 403]


async def _mtls(runner: MeshRunner, res: Results) -> None:
    served = mtls = 0.0
    for r in runner.replicas:
        if r.plan.service != "inference" or r.admin is None:
            continue
        host, _, port = r.admin.rpartition(":")
        status, text = await http_get(host, int(port), "/stats/prometheus")
        counts = counts_from(text.decode(), "destination") if status == 200 else None
        if counts is not None:
            served += counts.requests
            mtls += counts.mtls
    res.lines.append(
        f"inference sidecars served {served:.0f} requests, "
        f"{(mtls / served if served else 0):.1%} over mutual TLS"
    )
    res.check(
        "all inbound requests over mTLS", served > 0 and mtls == served, f"{mtls:.0f}/{served:.0f}"
    )
    inbound = next(r.plan for r in runner.replicas if r.plan.service == "inference")
    refused = await _plaintext_refused(inbound.inbound_port or 0)
    res.lines.append(f"plaintext to an inference sidecar: {'refused' if refused else 'ANSWERED'}")
    res.check("STRICT refuses plaintext", refused, "")


async def _plaintext_refused(port: int) -> bool:
    try:
        status, _ = await http_get("127.0.0.1", port, "/v2/health/ready", timeout_s=3.0)
    except Exception:  # reset, timeout, garbage: all mean "not served in plaintext"
        return True
    return status != 200


def _audit(state_dir: Path, denied_ids: list[str], res: Results, policies: bool) -> None:
    files = sorted((state_dir / "audit").glob("*.jsonl"))
    if not policies:
        res.lines.append("audit log: not written (authorization not in this build)")
        return
    records: list[dict[str, object]] = []
    all_ok = True
    for f in files:
        result = verify(f)
        all_ok &= result.ok
        if not result.ok:
            res.lines.append(f"audit log {f.name}: BROKEN at line {result.line}: {result.reason}")
        records += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    audited = {r.get("request_id") for r in records if r.get("decision") == "DENY"}
    missing = [rid for rid in denied_ids if rid not in audited]
    res.lines.append(
        f"audit log: {len(files)} files, {len(records)} records, hash chains "
        f"{'verified' if all_ok and files else 'NOT verified'}; "
        f"{len(denied_ids) - len(missing)}/{len(denied_ids)} intruder denials found"
    )
    res.check(
        "audit log verified and complete",
        all_ok and bool(files) and not missing,
        f"missing {len(missing)}",
    )


CANARY_WEIGHT = 0.1  # the v2 weight in examples/demo/istio/virtual-service.yaml


def canary_share_plausible(share: float, answered: int, *, z: float = 4.0) -> bool:
    """Whether ``share`` of ``answered`` requests fits a 10% weighted split.

    A fixed band ignores the sample size: with 60 requests a true 10% split gives
    one v2 answer or none about 1.6% of the time. Within ``z`` binomial standard
    deviations a correct split fails about once in 15,000 runs at z=4.
    """
    if answered <= 0:
        return False
    sd: float = math.sqrt(CANARY_WEIGHT * (1 - CANARY_WEIGHT) / answered)
    return abs(share - CANARY_WEIGHT) <= z * sd


async def run_demo(mesh_path: Path, *, requests: int, console: Console) -> int:
    config = load_mesh(_locate(mesh_path))
    with tempfile.TemporaryDirectory(prefix="meshlet-demo-") as tmp:
        config = dataclasses.replace(config, state_dir=Path(tmp))
        runner = MeshRunner(config, on_event=lambda m: console.print(f"[yellow]meshlet:[/] {m}"))
        console.print(f"meshlet demo: starting {config.source} (state in {tmp}) ...")
        res = Results()
        await runner.start()
        try:
            console.print(replicas_table(runner))
            console.print(
                f"driving {2 * requests + max(10, requests // 8)} frontend requests "
                "and 20 intruder requests ..."
            )
            denied_ids = await asyncio.wait_for(_scenario(runner, res, requests), 300)
        finally:
            await runner.stop()  # sidecars flush their audit logs on a clean stop
        _audit(config.state_dir, denied_ids, res, runner.features.policies)
    console.rule("meshlet demo report")
    for line in res.lines:
        console.print("  " + line, highlight=False)
    for line in inactive_features(runner):
        console.print(f"  [yellow]not active:[/] {line}", highlight=False)
    for c in res.checks:
        mark = "[green]PASS[/]" if c.ok else "[red]FAIL[/]"
        console.print(f"  {mark} {c.name}{f' ({c.detail})' if c.detail else ''}", highlight=False)
    return 0 if all(c.ok for c in res.checks) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshlet.mesh.demo", description="Run the seeds' scenario on a local mesh."
    )
    parser.add_argument("--mesh", type=Path, default=DEFAULT_MESH, help="mesh file to run")
    parser.add_argument("--requests", type=int, default=300, help="frontend requests to send")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    return asyncio.run(run_demo(args.mesh, requests=args.requests, console=console))


if __name__ == "__main__":
    sys.exit(main())
