"""Streaming-aware deadlines and the per-route request body limit.

An LLM answering token by token over SSE may take minutes, and that is healthy
as long as tokens keep coming; a replica that stops producing is not. So a
stream has two independent deadlines: ``total_s`` (the route ``timeout``; None =
none, Istio's default for HTTP routes) and ``idle_s`` between chunks
(``meshlet.io/stream-idle-timeout``; default 5 min, Envoy's stream_idle_timeout
default). A generation that keeps producing is never cut by the idle timeout.

The body limit counts bytes as they stream, so a 413 needs no buffering.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_STREAM_IDLE_S = 300.0  # Envoy's stream_idle_timeout default (5 min)


class Expiry(enum.Enum):
    TOTAL = "total timeout"
    IDLE = "idle timeout between chunks"


class StreamDeadline:
    """Ask ``expired(now)`` whenever the driver wakes; ``next_deadline()`` says when
    to wake next. ``on_progress(now)`` on every chunk moved in either direction."""

    __slots__ = ("idle_s", "last_progress", "started", "total_s")

    def __init__(self, *, started: float, total_s: float | None, idle_s: float | None) -> None:
        self.started = started
        self.last_progress = started
        self.total_s = total_s
        self.idle_s = idle_s

    def on_progress(self, now: float) -> None:
        self.last_progress = max(self.last_progress, now)

    def next_deadline(self) -> float | None:
        deadlines = []
        if self.total_s is not None:
            deadlines.append(self.started + self.total_s)
        if self.idle_s is not None:
            deadlines.append(self.last_progress + self.idle_s)
        return min(deadlines) if deadlines else None

    def expired(self, now: float) -> Expiry | None:
        if self.total_s is not None and now >= self.started + self.total_s:
            return Expiry.TOTAL
        if self.idle_s is not None and now >= self.last_progress + self.idle_s:
            return Expiry.IDLE
        return None


@dataclass(slots=True)
class BodyLimit:
    """Counts request body bytes; ``add`` returns False once past ``max_bytes``
    (answer 413 and stop forwarding). ``max_bytes`` None = no limit."""

    max_bytes: int | None
    seen: int = 0

    def add(self, n: int) -> bool:
        self.seen += n
        return self.max_bytes is None or self.seen <= self.max_bytes

    def declared_ok(self, content_length: int | None) -> bool:
        """Refuse early when Content-Length already says the body is too big."""
        return self.max_bytes is None or content_length is None or content_length <= self.max_bytes
