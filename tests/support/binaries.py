"""System tools some tests drive as real clients (curl, openssl).

``make test`` installs Python packages only; these come from the operating
system's packages, so a machine without one skips the tests that need it, with
the reason in the report, instead of failing on FileNotFoundError.
"""

from __future__ import annotations

import shutil

import pytest


def requires(tool: str) -> pytest.MarkDecorator:
    """Skip unless ``tool`` is on PATH."""
    return pytest.mark.skipif(
        shutil.which(tool) is None,
        reason=f"{tool} is not installed (an OS package; make test installs Python packages only)",
    )
