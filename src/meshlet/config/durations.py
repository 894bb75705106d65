"""Parse human durations (``24h``, ``10m``, ``1h30m``, ``1.5s``, ``100ms``) into seconds.

One parser for the whole project: CLI flags (``--ttl 24h``), native config and
Istio YAML all spell durations the same way. The grammar is Go's
``time.ParseDuration`` restricted to the units Istio and Kubernetes users write
(``ms``, ``s``, ``m``, ``h``), which is also what protobuf-JSON ``Duration``
values (``"1.5s"``) look like, so an Istio ``timeout: 1.5s`` reads unchanged.
A bare number is refused (except ``0``): "30" could mean seconds or
milliseconds, and guessing is how timeouts end up 1000x off.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

# Longest unit first so "ms" is not read as "m" followed by garbage.
_UNIT_SECONDS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Return ``text`` as seconds; raise ``ValueError`` naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '10s', got {text!r}")
    s = text.strip()
    if not s:
        raise ValueError("duration is empty (write e.g. '10s', '1h30m' or '100ms')")
    if s == "0":  # Go and Istio accept a unitless zero
        return 0.0
    if s.startswith("-"):
        raise ValueError(f"duration {text!r} is negative")
    s = s.removeprefix("+")
    total = 0.0
    pos = 0
    seen: set[str] = set()
    while pos < len(s):
        match = _PART.match(s, pos)
        if match is None:
            raise ValueError(_explain(text, s[pos:]))
        number, unit = match.groups()
        if unit in seen:
            raise ValueError(f"duration {text!r} repeats the unit {unit!r}")
        seen.add(unit)
        total += float(number) * _UNIT_SECONDS[unit]
        pos = match.end()
    return total


def _explain(text: str, rest: str) -> str:
    if re.fullmatch(r"\d+(\.\d*)?", rest):
        return f"duration {text!r} is missing a unit after {rest!r} (use ms, s, m or h)"
    return f"duration {text!r} is not valid at {rest!r} (expected e.g. '10s', '1h30m', '100ms')"


def format_duration(seconds: float) -> str:
    """The shortest round-trippable spelling, for messages (``5400.0`` -> ``1h30m``)."""
    if seconds < 0:
        raise ValueError(f"duration {seconds} is negative")
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if millis < 1000:
        return f"{seconds * 1000:g}ms"
    hours, rem = divmod(millis, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rem:
        parts.append(f"{rem / 1000:g}s")
    return "".join(parts)
