"""Policy integration tests reuse the proxy tests' CA and sidecar-pair fixtures."""

from __future__ import annotations

from tests.integration.proxy.conftest import (  # noqa: F401 - fixtures are used by name
    pki,
    pytest_asyncio_loop_factories,
    session_ca,
)
