"""Fixtures and the loop hook shared by the in-process sidecar tests (proxy,
policy and traffic). A directory's conftest imports the ones it uses by name:
pytest registers a fixture only where a conftest defines or imports it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from meshlet.identity.ca import CertificateAuthority
from tests.support.pki import TRUST_DOMAIN, Pki


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Run sidecar tests on uvloop, the loop the sidecar runs on in production."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def session_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """One CA per session: creating a key pair per test costs more than the test."""
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), TRUST_DOMAIN, now=time.time())


@pytest.fixture
def pki(session_ca: CertificateAuthority, tmp_path: Path) -> Pki:
    """The session CA, issuing into this test's tmp dir."""
    return Pki(ca=session_ca, tmp=tmp_path)
