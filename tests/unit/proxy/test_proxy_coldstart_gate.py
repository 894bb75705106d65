"""ConnectGate: at most ``limit`` attempts, waiters served oldest first, those
that gave up skipped."""

from __future__ import annotations

import pytest

from meshlet.proxy.connect_gate import ConnectGate


def test_slots_are_bounded_and_freed() -> None:
    gate: ConnectGate[str] = ConnectGate(limit=2)
    assert [gate.try_connect() for _ in range(3)] == [True, True, False]
    gate.connect_done()
    assert gate.try_connect()
    assert gate.connecting == 2


def test_newcomer_queues_behind_waiters_even_with_a_free_slot() -> None:
    gate: ConnectGate[str] = ConnectGate(limit=1)
    assert gate.try_connect()
    gate.wait("a")
    gate.connect_done()
    assert not gate.try_connect()  # "a" came first
    assert gate.admit_next(lambda w: True) == "a"
    assert gate.connecting == 1


def test_released_connection_goes_to_the_oldest_live_waiter() -> None:
    gate: ConnectGate[str] = ConnectGate(limit=1)
    for w in ("a", "b", "c"):
        gate.wait(w)
    gone = {"a"}
    assert gate.next_waiter(lambda w: w not in gone) == "b"
    assert gate.next_waiter(lambda w: w not in gone) == "c"
    assert gate.next_waiter(lambda w: w not in gone) is None
    assert not gate.line


def test_admit_next_takes_no_slot_when_full_or_nobody_waits() -> None:
    gate: ConnectGate[str] = ConnectGate(limit=1)
    assert gate.admit_next(lambda w: True) is None
    assert gate.connecting == 0
    assert gate.try_connect()
    gate.wait("a")
    assert gate.admit_next(lambda w: True) is None
    assert list(gate.line) == ["a"]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        pytest.param(lambda: ConnectGate(limit=0), "at least 1", id="zero-limit"),
        pytest.param(lambda: ConnectGate().connect_done(), "without an attempt", id="unbalanced"),
    ],
)
def test_misuse_is_a_bug(action: object, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        action()  # type: ignore[operator]
