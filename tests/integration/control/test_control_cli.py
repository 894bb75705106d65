"""`meshlet control` and `meshlet proxy --control` refuse bad input with one clear
line per problem and exit 2, before serving anything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.integration.control.conftest import TD, mesh_yaml
from tests.support.processes import run_meshlet

from meshlet.identity.ca import CertificateAuthority

pytestmark = pytest.mark.integration


def test_bad_config_dir_is_refused_with_file_and_line(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.init(ca_dir, TD, now=time.time())
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(mesh_yaml(8080))
    (config / "bad.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: a, namespace: default}\nspec: {action: PERMIT}\n"
    )
    result = run_meshlet(
        "control", "--config-dir", str(config), "--ca-dir", str(ca_dir), "--listen",
        "127.0.0.1:0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{config / 'bad.yaml'}:4" in result.stderr
    assert "action" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # never announced ready


def test_trust_domain_must_match_the_ca(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.init(ca_dir, "other.org", now=time.time())
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(mesh_yaml(8080))
    result = run_meshlet(
        "control", "--config-dir", str(config), "--ca-dir", str(ca_dir), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "is not the CA's trust domain 'other.org'" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "give --config FILE (static bootstrap) or --control URL", id="neither"),
        pytest.param(
            ["--control", "https://127.0.0.1:1"], "--workload is required", id="no-workload"
        ),
        pytest.param(
            ["--control", "http://127.0.0.1:1", "--workload", "w", "--token", "x.y.z"],
            "--control must be an https://host:port URL",
            id="plain-http",
        ),
        pytest.param(
            ["--control", "https://127.0.0.1:1", "--workload", "w", "--token", "nope"],
            "--token is not a meshlet join token",
            id="bad-token",
        ),
    ],
)
def test_dynamic_proxy_flags_are_checked(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_meshlet("proxy", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
