"""The demo's canary check scales with the number of answered requests."""

from __future__ import annotations

import pytest

from meshlet.mesh.demo import canary_share_plausible


@pytest.mark.parametrize(
    ("share", "answered", "plausible"),
    [
        pytest.param(0.082, 292, True, id="a-normal-run"),
        pytest.param(1 / 58, 58, True, id="one-in-58-is-chance"),
        pytest.param(0.0, 292, False, id="no-v2-in-a-full-run"),
        pytest.param(0.5, 292, False, id="even-split"),
        pytest.param(0.0, 150, False, id="no-v2-in-the-test-run"),
        pytest.param(0.1, 0, False, id="nothing-answered"),
    ],
)
def test_canary_share(share: float, answered: int, plausible: bool) -> None:
    assert canary_share_plausible(share, answered) is plausible
