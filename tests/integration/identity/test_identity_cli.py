"""``meshlet ca`` through the real console script: exit codes, files, one-line errors."""

from __future__ import annotations

import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.binaries import requires
from tests.support.processes import run_meshlet

from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.tokens import TokenLedger

pytestmark = pytest.mark.integration

WEB = "spiffe://cluster.local/ns/default/sa/web"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshlet: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "ca"
    result = run_meshlet("ca", "init", "--dir", d)
    assert result.returncode == 0, result.stderr
    return d


def test_init_creates_a_ca_with_private_keys(ca_dir: Path) -> None:
    for key in ("root-key.pem", "issuer-key.pem"):
        assert stat.S_IMODE((ca_dir / key).stat().st_mode) == 0o600
    assert CertificateAuthority.load(ca_dir).trust_domain == "cluster.local"


def test_init_refuses_to_overwrite_then_force_replaces(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert run_meshlet("ca", "init", "--dir", d, "--trust-domain", "a.example").returncode == 0
    before = (d / "bundle.pem").read_bytes()
    assert "already exists" in one_line_error(run_meshlet("ca", "init", "--dir", d))
    assert (d / "bundle.pem").read_bytes() == before
    assert run_meshlet("ca", "init", "--dir", d, "--force").returncode == 0
    assert (d / "bundle.pem").read_bytes() != before


@requires("openssl")
def test_issue_writes_the_three_files_and_openssl_agrees(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "web"
    result = run_meshlet("ca", "issue", "--dir", ca_dir, "--id", WEB, "--out", out, "--ttl", "2h")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["bundle.pem", "cert.pem", "key.pem"]
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    assert (out / "cert.pem").read_text().count("BEGIN CERTIFICATE") == 2
    chain = out / "cert.pem"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", out / "bundle.pem", "-untrusted", chain, chain],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr


def test_inspect_summarizes_and_checks_the_chain(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "web"
    assert run_meshlet("ca", "issue", "--dir", ca_dir, "--id", WEB, "--out", out).returncode == 0
    result = run_meshlet("ca", "inspect", out / "cert.pem")
    assert result.returncode == 0, result.stderr
    assert f"spiffe id:   {WEB}" in result.stdout
    assert "OK: chains to a trusted root" in result.stdout
    assert "serverAuth, clientAuth" in result.stdout
    # X.509 times are whole seconds, so "24h" or "23h59m5Xs" depending on rounding.
    assert re.search(r"expires in (24h|23h59m\d+s)\)", result.stdout), result.stdout


def test_inspect_fails_against_a_foreign_bundle(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "web"
    assert run_meshlet("ca", "issue", "--dir", ca_dir, "--id", WEB, "--out", out).returncode == 0
    assert run_meshlet("ca", "init", "--dir", tmp_path / "other").returncode == 0
    result = run_meshlet(
        "ca", "inspect", out / "cert.pem", "--bundle", tmp_path / "other/bundle.pem"
    )
    assert result.returncode == 1
    assert "FAILED: certificate does not chain" in result.stdout


def test_token_prints_a_verifiable_single_use_token(ca_dir: Path) -> None:
    result = run_meshlet("ca", "token", "--dir", ca_dir, "--id", WEB, "--ttl", "5m")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2
    ca = CertificateAuthority.load(ca_dir)
    ledger = TokenLedger()
    claims = ca.verify_join_token(token, now=time.time(), ledger=ledger)
    assert str(claims.spiffe_id) == WEB
    assert claims.expires_at - claims.issued_at == 300


def test_rotate_root_keeps_old_svids_verifying(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert run_meshlet("ca", "init", "--dir", d).returncode == 0
    assert (
        run_meshlet("ca", "issue", "--dir", d, "--id", WEB, "--out", tmp_path / "old").returncode
        == 0
    )
    result = run_meshlet("ca", "rotate-root", "--dir", d)
    assert result.returncode == 0, result.stderr
    assert "2 roots" in result.stdout
    assert (
        run_meshlet("ca", "issue", "--dir", d, "--id", WEB, "--out", tmp_path / "new").returncode
        == 0
    )
    for name in ("old", "new"):
        check = run_meshlet(
            "ca", "inspect", tmp_path / name / "cert.pem", "--bundle", d / "bundle.pem"
        )
        assert check.returncode == 0, (name, check.stdout)
    retired = run_meshlet("ca", "retire-roots", "--dir", d)
    assert retired.returncode == 0, retired.stderr
    assert "dropped 1 old root" in retired.stdout
    old = run_meshlet("ca", "inspect", tmp_path / "old" / "cert.pem", "--bundle", d / "bundle.pem")
    assert old.returncode == 1
    new = run_meshlet("ca", "inspect", tmp_path / "new" / "cert.pem", "--bundle", d / "bundle.pem")
    assert new.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("issue", "--id", "spiffe://Cluster.local/x", "--out", "o"), "uppercase", id="bad-id"
        ),
        pytest.param(
            ("issue", "--id", "spiffe://other.td/x", "--out", "o"),
            "not in this CA's trust domain",
            id="other-trust-domain",
        ),
        pytest.param(
            ("issue", "--id", WEB, "--out", "o", "--ttl", "24"), "missing a unit", id="ttl"
        ),
        pytest.param(("token", "--id", WEB, "--ttl", "1w"), "--ttl", id="token-ttl"),
        pytest.param(("token", "--id", "web"), "no scheme", id="token-bad-id"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    ca_dir: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    action, *rest = args
    line = one_line_error(run_meshlet("ca", action, "--dir", ca_dir, *rest, cwd=tmp_path))
    assert message in line


def test_missing_ca_and_malformed_files_are_one_line_errors(tmp_path: Path) -> None:
    line = one_line_error(run_meshlet("ca", "token", "--dir", tmp_path / "none", "--id", WEB))
    assert "no CA here" in line
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
    assert "malformed" in one_line_error(run_meshlet("ca", "inspect", bad))
    assert "No such file" in one_line_error(run_meshlet("ca", "inspect", tmp_path / "absent.pem"))
