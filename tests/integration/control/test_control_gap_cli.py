"""The new flags: `meshlet proxy --tcp` is checked before anything starts, and
`meshlet control --no-audit` writes no audit log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.integration.control.conftest import TD, mesh_yaml
from tests.support.processes import run_meshlet, spawn

from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("tcp", "message"),
    [
        pytest.param(["db"], "--tcp: expected SERVICE=HOST:PORT, got 'db'", id="no-equals"),
        pytest.param(["=127.0.0.1:1"], "--tcp: expected SERVICE=HOST:PORT", id="no-name"),
        pytest.param(["db=nowhere"], "--tcp:", id="bad-address"),
        pytest.param(
            ["db=127.0.0.1:1", "db=127.0.0.1:2"], "--tcp: service 'db' given twice", id="twice"
        ),
    ],
)
def test_tcp_flag_is_checked(tcp: list[str], message: str, tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD, now=time.time())
    token = ca.issue_join_token(SpiffeId.parse(f"spiffe://{TD}/ns/default/sa/w"), now=time.time())
    flags = [arg for value in tcp for arg in ("--tcp", value)]
    result = run_meshlet(
        "proxy", "--control", "https://127.0.0.1:1", "--workload", "w", "--token", token, *flags,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_control_without_audit_writes_none(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD, now=time.time())
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(mesh_yaml(8080))
    control = await spawn(
        ["control", "--config-dir", str(config), "--ca-dir", str(ca.directory),
         "--listen", "127.0.0.1:0", "--no-audit"],
        tmp_path / "control.log",
    )  # fmt: skip
    try:
        assert control.ready["audit"] is None
    finally:
        assert await control.stop() == 0
    assert not list((ca.directory / "control").glob("audit.jsonl*"))
