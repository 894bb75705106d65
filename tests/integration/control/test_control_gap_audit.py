"""Audit logs in control-plane mode, with real processes: the dynamic sidecar
writes one hash chain of policy decisions across policy pushes, ``meshlet
control`` chains its own security events, ``meshlet audit verify`` accepts both
and names the line once one is edited."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.control.conftest import ECHO_ID, FRONTEND_ID, TD, App, deny_frontend
from tests.support.processes import Proc, run_meshlet, spawn, tail
from tests.support.waiting import eventually

from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.x509 import make_csr
from meshlet.proxy.control_client import ControlClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEP_S = 30.0  # one step with several processes on a loaded 2-core machine


def sidecar_args(url: str, token: str, workload: str, state: Path) -> list[str]:
    return [
        "proxy", "--control", url, "--token", token, "--workload", workload,
        "--bundle", str(state.parent / "ca" / "bundle.pem"), "--state-dir", str(state),
        "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
    ]  # fmt: skip


def write_whole(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so the control plane's poll never reads a
    half-written file (the hidden temporary file is not part of the config)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def tamper(path: Path, old: str, new: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if old in line)
    lines[index] = lines[index].replace(old, new, 1)
    path.write_text("".join(lines))


def verify(path: Path) -> tuple[int, str]:
    result = run_meshlet("audit", "verify", str(path))
    return result.returncode, result.stdout + result.stderr


async def test_audit_logs_in_control_plane_mode(
    ca: CertificateAuthority, config_dir: Path, app: App, tmp_path: Path
) -> None:
    (config_dir / "policy.yaml").write_text(deny_frontend())
    tokens = {
        name: ca.issue_join_token(SpiffeId.parse(sid), now=time.time())
        for name, sid in (("echo", ECHO_ID), ("frontend", FRONTEND_ID))
    }
    control_log = ca.directory / "control" / "audit.jsonl"
    sidecar_log = tmp_path / "echo" / "audit.jsonl"  # the default: <state-dir>/audit.jsonl
    procs: list[Proc] = []
    try:
        control = await spawn(
            ["control", "--config-dir", str(config_dir), "--ca-dir", str(ca.directory),
             "--listen", "127.0.0.1:0", "--hold", "2"],
            tmp_path / "control.log",
        )  # fmt: skip
        procs.append(control)
        assert control.ready["audit"] == str(control_log)
        url = f"https://{control.ready['listen']}"
        for name in ("echo", "frontend"):
            procs.append(
                await spawn(
                    sidecar_args(url, tokens[name], name, tmp_path / name),
                    tmp_path / f"{name}.log",
                )
            )
        front = procs[-1]
        proxy = f"http://{front.ready['outbound']}"
        async with httpx.AsyncClient(proxy=proxy, timeout=10.0) as client:

            def denial_by(policy: str) -> Any:
                async def check() -> bool:
                    response = await client.get("http://echo/hello")
                    return response.status_code == 403 and any(
                        r["decision"] == "DENY" and policy in str(r.get("policy"))
                        for r in records(sidecar_log)
                    )

                return check

            await eventually(denial_by("no-frontend"), timeout_s=STEP_S)
            # A pushed policy change builds a new gate: it writes the same chain.
            write_whole(
                config_dir / "policy.yaml",
                deny_frontend().replace("no-frontend", "still-no-frontend"),
            )
            await eventually(denial_by("still-no-frontend"), timeout_s=STEP_S)

        # A refused change and a replayed token are security events too.
        write_whole(config_dir / "bad.yaml", "apiVersion: security.istio.io/v1\nkind: Nope\n")
        await eventually(
            lambda: any(r["event"] == "config_refused" for r in records(control_log)),
            timeout_s=STEP_S,
        )
        client_api = ControlClient(
            url=url,
            bundle_pem=ca.bundle_pem(),
            control_id=str(SpiffeId.control_plane(TD)),
            cert=(tmp_path / "frontend" / "cert.pem", tmp_path / "frontend" / "key.pem"),
        )
        csr, _ = make_csr(SpiffeId.parse(ECHO_ID))
        try:
            status, _ = await client_api.call(
                "POST", "/v1/identity", {"csr": csr.decode(), "token": tokens["echo"]}
            )
            assert status == 403  # used already
            status, _ = await client_api.call("GET", "/v1/watch?proxy=x&workload=echo")
            assert status == 403  # the frontend's SVID acting as echo
        finally:
            client_api.reset()
    finally:
        for proc in reversed(procs):
            await proc.stop()  # a clean stop flushes the audit logs

    assert not list(sidecar_log.parent.glob("audit.jsonl.w*")), "a second chain was started"
    decisions = records(sidecar_log)
    policies = {str(r.get("policy")) for r in decisions if r["decision"] == "DENY"}
    assert any("still-no-frontend" in p for p in policies), policies
    assert any("still" not in p and "no-frontend" in p for p in policies), policies
    assert all(r["source_principal"] == FRONTEND_ID for r in decisions)

    events = [r["event"] for r in records(control_log)]
    for expected in (
        "control_svid_issued", "config_accepted", "token_burned", "svid_issued",
        "config_refused", "token_refused", "svid_refused", "access_refused",
    ):  # fmt: skip
        assert expected in events, (expected, events, tail(control.log))
    assert events.count("token_burned") == 2  # one per sidecar; the replay burned nothing
    accepted = [r for r in records(control_log) if r["event"] == "config_accepted"]
    assert len({r["config_digest"] for r in accepted}) == 2  # start, then the policy push
    refused = next(r for r in records(control_log) if r["event"] == "config_refused")
    assert refused["serving_digest"] == accepted[-1]["config_digest"]
    assert refused["candidate_digest"] != refused["serving_digest"]
    assert tokens["echo"] not in control_log.read_text()  # ids only, never tokens

    for log, field in ((sidecar_log, '"decision":"DENY"'), (control_log, '"token_burned"')):
        code, out = verify(log)
        assert code == 0, out
        tamper(log, field, field.replace("DENY", "ALLOW").replace("burned", "refused"))
        code, out = verify(log)
        assert code == 1, out
        assert "edited" in out, out
