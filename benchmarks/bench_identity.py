"""How long it takes to sign workload SVIDs: the cost of rotating a whole cluster.

The seeds quote 12 s (Linkerd) and 45 s (Istio) to rotate 1,000 pods; meshlet's
goal is to sign 1,000 SVIDs from CSRs in under 1 s on one core. CSRs (and their
keys) are made before the clock starts, as workloads make them; the timed loop
is exactly what the control plane does per renewal: parse the CSR, check its
signature and requested identity, build and sign the leaf, return the chain.

Run: .venv/bin/python benchmarks/bench_identity.py [--n 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.tokens import TokenLedger
from meshlet.identity.x509 import make_csr

GOAL_S = 1.0  # per 1,000 SVIDs (issue 2)


def _pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def run(n: int, repeat: int) -> dict[str, float]:
    """Time signing ``n`` CSRs ``repeat`` times; return the best and median runs."""
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ca = CertificateAuthority.init(Path(tmp) / "ca", "cluster.local", now=now)
        ids = [SpiffeId.for_workload("cluster.local", f"ns{i % 50}", f"sa{i}") for i in range(n)]
        csrs = [make_csr(sid)[0] for sid in ids]
        runs: list[float] = []
        for _ in range(repeat):
            start = time.perf_counter()
            for sid, csr in zip(ids, csrs, strict=True):
                ca.sign_csr(csr, proven_id=sid, now=now)
            runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        tokens = [ca.issue_join_token(sid, now=now) for sid in ids[: min(n, 1000)]]
        token_issue_s = time.perf_counter() - start
        ledger = TokenLedger()
        start = time.perf_counter()
        for token in tokens:
            ca.verify_join_token(token, now=now, ledger=ledger)
        token_verify_s = time.perf_counter() - start
    return {
        "n": float(n),
        "best_s": min(runs),
        "median_s": statistics.median(runs),
        "tokens": float(len(tokens)),
        "token_issue_s": token_issue_s,
        "token_verify_s": token_verify_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="SVIDs per run (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; best is reported")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args()
    pinned = "not pinned" if args.no_pin else _pin_to_one_core()
    r = run(args.n, args.repeat)
    n = int(r["n"])
    per_ms = r["best_s"] / n * 1000
    per_1000 = r["best_s"] / n * 1000
    print(f"identity benchmark ({pinned}, {args.repeat} runs)")
    print(f"sign_csr: {n} SVIDs in {r['best_s']:.3f} s best, {r['median_s']:.3f} s median")
    print(f"sign_csr: {per_ms:.3f} ms per SVID, {n / r['best_s']:.0f} SVIDs/s")
    verdict = "MET" if per_1000 < GOAL_S else "MISSED"
    print(f"goal: 1,000 SVIDs < {GOAL_S:.1f} s on one core -> {per_1000:.3f} s ({verdict})")
    t = int(r["tokens"])
    print(
        f"join tokens: issue {r['token_issue_s'] / t * 1e6:.0f} us, "
        f"verify+burn {r['token_verify_s'] / t * 1e6:.0f} us each ({t} tokens)"
    )


if __name__ == "__main__":
    main()
