"""Helpers for the codec tests: split feeding and event normalisation."""

from __future__ import annotations

from typing import Protocol

from meshlet.http1.events import Data, Event


class Feedable(Protocol):
    def feed(self, data: bytes) -> list[Event]: ...


def merge_data(events: list[Event]) -> list[Event]:
    """Consecutive Data events joined: how a body is split depends on the feed."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Data):
            if not event.data:
                continue
            last = out[-1] if out else None
            if isinstance(last, Data):
                out[-1] = Data(last.data + event.data)
                continue
        out.append(event)
    return out


def feed(codec: Feedable, data: bytes, step: int = 0, *, eof: bool = False) -> list[Event]:
    """Feed ``data`` in pieces of ``step`` bytes (0: whole), then EOF if asked;
    return the events with body pieces merged."""
    events: list[Event] = []
    if step:
        for start in range(0, len(data), step):
            events += codec.feed(data[start : start + step])
    elif data:
        events += codec.feed(data)
    if eof:
        events += codec.feed(b"")
    return merge_data(events)
