"""``meshlet.config.durations``: the one duration grammar (Go/Istio style)."""

from __future__ import annotations

import pytest

from meshlet.config.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("24h", 86400.0, id="hours"),
        pytest.param("10m", 600.0, id="minutes"),
        pytest.param("90s", 90.0, id="seconds"),
        pytest.param("100ms", 0.1, id="millis"),
        pytest.param("1.5s", 1.5, id="decimal"),
        pytest.param(".5s", 0.5, id="leading-dot"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("1h30m15s250ms", 5415.25, id="all-units"),
        pytest.param("0", 0.0, id="bare-zero"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param(" 5s ", 5.0, id="whitespace"),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("30", "missing a unit", id="bare-number"),
        pytest.param("1h30", "missing a unit", id="trailing-number"),
        pytest.param("-5s", "negative", id="negative"),
        pytest.param("5d", "not valid", id="days"),
        pytest.param("5 s", "not valid", id="inner-space"),
        pytest.param("s", "not valid", id="unit-only"),
        pytest.param("1s1s", "repeats", id="repeated-unit"),
        pytest.param("abc", "not valid", id="garbage"),
    ],
)
def test_parse_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.0, 0.25, 1.0, 90.0, 600.0, 5400.0, 86400.0, 3661.5])
def test_format_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
