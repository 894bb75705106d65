"""Traffic integration tests: the proxy tests' session CA and the ``tpki`` fixture."""

from __future__ import annotations

from tests.integration.proxy.conftest import session_ca  # noqa: F401 - fixture by name
from tests.integration.traffic.mesh_support import tpki_fixture  # noqa: F401 - "tpki"
