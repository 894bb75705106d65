"""Fixtures for proxy integration tests: the shared CA, ``pki`` and uvloop hook
from ``tests.support.fixtures``, and a ready sidecar pair (``pair``) from
``tests.support.sidecars``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.support.fixtures import (  # noqa: F401 - fixtures and hook are used by name
    pki,
    pytest_asyncio_loop_factories,
    session_ca,
)
from tests.support.pki import Pki
from tests.support.sidecars import Pair, start_pair, stop_pair


@pytest.fixture
async def pair(pki: Pki) -> AsyncIterator[Pair]:  # noqa: F811 - the imported fixture by name
    p = await start_pair(pki)
    try:
        yield p
    finally:
        await stop_pair(p)
