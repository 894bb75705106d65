"""Start-up shortcuts of the sidecar agree with the slower standard paths they replace."""

from __future__ import annotations

import calendar
import ssl
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlet.proxy.tls import cert_time_seconds

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@st.composite
def _cert_times(draw: st.DrawFn) -> str:
    year = draw(st.integers(1950, 2400))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, calendar.monthrange(year, month)[1]))
    hms = [draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))]
    return f"{_MONTHS[month - 1]} {day:2d} {hms[0]:02d}:{hms[1]:02d}:{hms[2]:02d} {year} GMT"


@given(_cert_times())
def test_cert_time_seconds_matches_the_ssl_module(text: str) -> None:
    assert cert_time_seconds(text) == ssl.cert_time_to_seconds(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("Jan  1 00:00:00 1970 GMT", 0.0, id="epoch"),
        pytest.param("Feb 29 12:00:00 2000 GMT", 951825600.0, id="leap-day-2000"),
        pytest.param("Mar  1 00:00:00 2100 GMT", 4107542400.0, id="2100-not-leap"),
    ],
)
def test_cert_time_seconds_known_values(text: str, seconds: float) -> None:
    assert cert_time_seconds(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Jan  1 00:00:00 1970 UTC", id="not-gmt"),
        pytest.param("Foo  1 00:00:00 1970 GMT", id="bad-month"),
        pytest.param("Jan 1 00:00 1970 GMT", id="short-time"),
        pytest.param("20260101000000Z", id="asn1-form"),
    ],
)
def test_cert_time_seconds_refuses_other_shapes(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        cert_time_seconds(text)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_malloc_tuning_and_trim_reach_glibc_without_find_library() -> None:
    # In a fresh interpreter: find_library would import ctypes.util and run ldconfig.
    code = (
        "import sys; from meshlet.proxy.memory import trim_heap, tune_malloc; "
        "assert tune_malloc() is True; trim_heap(); print('ctypes.util' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "False"
