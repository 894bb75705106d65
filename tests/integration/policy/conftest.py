"""Policy integration tests use the shared CA, ``pki`` and uvloop hook of the
in-process sidecar tests."""

from __future__ import annotations

from tests.support.fixtures import (  # noqa: F401 - fixtures and hook are used by name
    pki,
    pytest_asyncio_loop_factories,
    session_ca,
)
