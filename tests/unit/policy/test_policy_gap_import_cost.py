"""A sidecar without policies never loads the policy gate or its heavy
dependencies: the gate (and with it PyJWT, cryptography, pydantic and the TLS
trust store for JWKS) is imported only when ``inbound.policies`` is set."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "cryptography",
    "pydantic",
    "jwt",
    "meshlet.policy.engine",
    "meshlet.policy.jwt",
    "meshlet.proxy.authz",
    "meshlet.proxy.authz_jwks",
)


def test_sidecar_start_path_imports_no_policy_machinery() -> None:
    # a fresh interpreter: this test process has imported everything already
    code = (
        "import sys, meshlet.cli.main, meshlet.cli.proxy, meshlet.proxy.runner, "
        "meshlet.proxy.server, meshlet.config.bootstrap; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_the_gate_import_does_load_what_it_needs() -> None:
    # the other side of the bargain, so the check above cannot pass vacuously
    code = (
        "import sys, meshlet.proxy.authz; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert set(out.stdout.strip().split(",")) >= {"jwt", "pydantic", "meshlet.proxy.authz_jwks"}
