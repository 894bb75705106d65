"""normalize_target's fast path (byte-value scans) against each byte that sends
a target to the slow path on its own: '.', '%' and '\\'."""

from __future__ import annotations

import pytest

from meshlet.proxy.inbound import normalize_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param(b"/a/./b", b"/a/b", id="dot-only"),
        pytest.param(b"/%41b", b"/Ab", id="percent-only"),
        pytest.param(b"/a\\b", b"/a/b", id="backslash-only"),
        pytest.param(b"/a/b?x=%00", b"/a/b?x=%00", id="query-only"),
    ],
)
def test_each_special_byte_takes_the_slow_path(target: bytes, expected: bytes) -> None:
    assert normalize_target(target) == expected


def test_plain_target_is_returned_unchanged() -> None:
    target = b"/v2/models/resnet/infer"
    assert normalize_target(target) is target  # the fast path: no copy


def test_nul_escape_refused() -> None:
    assert normalize_target(b"/a%00b") is None
