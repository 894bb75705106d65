"""Traffic integration tests: the shared session CA and the ``tpki`` fixture."""

from __future__ import annotations

import pytest
from tests.support.fixtures import pki, session_ca  # noqa: F401 - fixtures used by name
from tests.support.pki import Pki


@pytest.fixture
def tpki(pki: Pki) -> Pki:  # noqa: F811 - the imported fixture is requested by name
    """The session CA, issuing into this test's tmp dir (``pki`` under the name
    the traffic tests use)."""
    return pki
