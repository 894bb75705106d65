"""Every codec test runs against both parser adapters (STYLE.md §7)."""

from __future__ import annotations

import pytest

from meshlet.http1.adapter import Adapter
from meshlet.http1.h11_adapter import ADAPTER as H11
from meshlet.http1.httptools_adapter import ADAPTER as HTTPTOOLS


@pytest.fixture(params=[HTTPTOOLS, H11], ids=lambda adapter: adapter.name)
def adapter(request: pytest.FixtureRequest) -> Adapter:
    chosen: Adapter = request.param
    return chosen


@pytest.fixture(params=[0, 1, 7], ids=["whole", "byte-at-a-time", "7-byte-splits"])
def step(request: pytest.FixtureRequest) -> int:
    """How input is split when fed: 0 means in one piece."""
    chosen: int = request.param
    return chosen
