"""Unit tests are pure: an autouse guard refuses any socket (STYLE.md §7)."""

from __future__ import annotations

import socket

import pytest


class SocketUsedInUnitTest(AssertionError):
    """A unit test tried to open a socket; move it to tests/integration."""


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> socket.socket:
        raise SocketUsedInUnitTest("unit tests may not open sockets")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
