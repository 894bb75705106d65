"""normalize_target: Istio's BASE path normalization of an inbound request target."""

from __future__ import annotations

import pytest

from meshlet.policy.attributes import normalize_path
from meshlet.proxy.inbound import normalize_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param(b"/v2/models/m/infer", b"/v2/models/m/infer", id="plain"),
        pytest.param(b"/v2/models/../admin", b"/v2/admin", id="dot-dot"),
        pytest.param(b"/a/./b/", b"/a/b/", id="dot"),
        pytest.param(b"/a/%2e%2E/b", b"/b", id="escaped-dots"),
        pytest.param(b"/a\\..\\b", b"/b", id="backslashes"),
        pytest.param(b"/%7euser%2a", b"/~user%2A", id="unreserved-decoded-other-upper"),
        pytest.param(b"/a%2fb", b"/a%2Fb", id="escaped-slash-kept"),
        pytest.param(b"/a//b", b"/a//b", id="slashes-not-merged"),
        pytest.param(b"/..", b"/", id="above-root"),
        pytest.param(b"/a/../b?x=/../%2e", b"/b?x=/../%2e", id="query-untouched"),
        pytest.param(b"/model.onnx", b"/model.onnx", id="dot-in-name"),
    ],
)
def test_normalize_target(target: bytes, expected: bytes) -> None:
    assert normalize_target(target) == expected


def test_plain_target_is_returned_as_is() -> None:
    target = b"/v1/chat/completions?stream=true"
    assert normalize_target(target) is target


@pytest.mark.parametrize("target", [b"/a%00", b"/a/%00/../b"])
def test_nul_escape_is_refused(target: bytes) -> None:
    assert normalize_target(target) is None


@pytest.mark.parametrize(
    "target", [b"/a/../b/./c", b"/x/%2e%2e/%7e", b"/p%2fq/..", b"/a\\b/../c", b"/%41/."]
)
def test_policy_sees_what_is_forwarded(target: bytes) -> None:
    """The gate normalizes again; on a normalized target that changes nothing."""
    forwarded = normalize_target(target)
    assert forwarded is not None
    assert normalize_path(forwarded.decode("latin-1")) == forwarded.decode("latin-1")
