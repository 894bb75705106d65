"""The clock moves only when told to; ConfigError keeps every problem."""

from __future__ import annotations

import pytest

from meshlet.clock import ManualClock, MonotonicClock
from meshlet.errors import ConfigError, MeshError, RemoteProtocolError


def test_manual_clock_moves_both_readings_together() -> None:
    clock = ManualClock(monotonic=5.0, wall=100.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.wall()) == (7.5, 102.5)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


def test_monotonic_clock_does_not_go_back() -> None:
    clock = MonotonicClock()
    assert clock.monotonic() <= clock.monotonic()


def test_config_error_keeps_each_problem_on_its_own_line() -> None:
    err = ConfigError(["a.yaml:1: x: bad", "a.yaml:4: y: worse"])
    assert err.problems == ("a.yaml:1: x: bad", "a.yaml:4: y: worse")
    assert str(err).splitlines() == list(err.problems)
    assert isinstance(err, MeshError)
    assert ConfigError("one").problems == ("one",)


def test_remote_protocol_error_carries_a_status_hint() -> None:
    assert RemoteProtocolError("too big", status_hint=431).status_hint == 431
    assert RemoteProtocolError("bad").status_hint == 400
