"""An optional JSON-lines access log that never writes per request.

A ``write()`` per request costs 10-15 µs on the sidecar's hot path (measured
while prototyping), more than every other telemetry cost together. So
:meth:`AccessLog.record` only appends a tuple to a list; the JSON is built and
written in one batch when the buffer holds ``max_entries`` records, when the
driver calls :meth:`AccessLog.maybe_flush` with a time past the flush interval
(the proxy does so about once a second), and at :meth:`AccessLog.close`.

What is never logged: bodies, header values other than the user agent and the
request id, and by default the query string (it often carries API keys or
signed-URL tokens). Log lines use Envoy's/Istio's default access-log field
names where one exists, so existing log pipelines can parse them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import BinaryIO

from meshlet.clock import Clock

logger = logging.getLogger(__name__)

# Flush at 256 records or after one second, whichever comes first: the same
# order as Envoy's access-log flush interval (1 s) and buffer, and small enough
# that a crash loses at most a second of lines.
DEFAULT_MAX_ENTRIES = 256
DEFAULT_FLUSH_INTERVAL_S = 1.0

FIELDS: tuple[str, ...] = (
    "start_time",
    "reporter",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "authority",
    "request_id",
    "user_agent",
    "downstream_remote_address",
    "upstream_host",
    "source_principal",
    "destination_principal",
    "connection_security_policy",
)
# Written after FIELDS, and only on the lines that have them, so a line without
# them is exactly FIELDS. ``upstream_model``: the model name sent upstream when
# an InferenceModel's target models (Gateway API Inference Extension) replaced
# the one the client asked for.
OPTIONAL_FIELDS: tuple[str, ...] = ("upstream_model",)

# One encoder for every line: json.dumps with non-default separators builds a
# new JSONEncoder per call, which is a third of the cost of a short line.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _q(value: str) -> str:
    """A JSON string literal; the common case (printable, no quote or backslash)
    needs no escaping and skips the encoder."""
    if value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return _ENCODER.encode(value)


_Record = tuple[
    float, str, str, str, str, int, str, int, int, float, str, str, str, str, str, str, str, bool,
    str | None,
]  # fmt: skip


class AccessLog:
    """Buffers request records and writes them as JSON lines in batches.

    ``write`` receives whole batches of encoded lines (one call per flush);
    ``clock`` supplies the monotonic reading used for the flush interval.
    """

    __slots__ = (
        "_buffer",
        "_cached_prefix",
        "_cached_second",
        "_clock",
        "_closed",
        "_include_query",
        "_interval_s",
        "_last_flush",
        "_max_entries",
        "_on_close",
        "_write",
        "lines_written",
    )  # fmt: skip

    def __init__(
        self,
        write: Callable[[bytes], object],
        *,
        clock: Clock,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        include_query: bool = False,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self._write = write
        self._on_close = on_close
        self._clock = clock
        self._max_entries = max_entries
        self._interval_s = flush_interval_s
        self._include_query = include_query
        self._buffer: list[_Record] = []
        self._last_flush = clock.monotonic()
        self._closed = False
        self._cached_second = -1
        self._cached_prefix = ""
        self.lines_written = 0

    @classmethod
    def to_path(
        cls,
        path: str,
        *,
        clock: Clock,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        include_query: bool = False,
    ) -> AccessLog:
        """An access log appending to ``path`` ("-" is standard output)."""
        stream: BinaryIO = (
            sys.stdout.buffer if path == "-" else open(path, "ab")  # noqa: SIM115 - closed by close()
        )

        def write(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        return cls(
            write,
            clock=clock,
            max_entries=max_entries,
            flush_interval_s=flush_interval_s,
            include_query=include_query,
            on_close=None if path == "-" else stream.close,
        )

    def wall(self) -> float:
        """The wall clock the log's timestamps come from (the injected clock)."""
        return self._clock.wall()

    def record(
        self,
        *,
        start_wall: float,
        reporter: str,
        method: str,
        path: str,
        protocol: str,
        response_code: int,
        response_flags: str,
        request_bytes: int,
        response_bytes: int,
        duration_s: float,
        authority: str,
        request_id: str,
        user_agent: str,
        source_address: str,
        upstream_host: str,
        source_principal: str,
        destination_principal: str,
        mtls: bool,
        upstream_model: str | None = None,  # None: sent as asked (the usual case)
    ) -> None:
        """Remember one finished request; hot path: one tuple, one append.
        ``start_wall`` is the request's start in POSIX seconds (see ``wall``)."""
        self._buffer.append(
            (start_wall, reporter, method, path, protocol, response_code, response_flags,
             request_bytes, response_bytes, duration_s, authority, request_id, user_agent,
             source_address, upstream_host, source_principal, destination_principal, mtls,
             upstream_model)
        )  # fmt: skip
        if len(self._buffer) >= self._max_entries:
            self.flush()

    def maybe_flush(self) -> None:
        """Flush when the interval has passed since the last flush (call it from a timer)."""
        if self._buffer and self._clock.monotonic() - self._last_flush >= self._interval_s:
            self.flush()

    def flush(self) -> None:
        """Encode and write everything buffered, as one write."""
        self._last_flush = self._clock.monotonic()
        if self._closed:
            self._buffer.clear()
            return
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        data = "".join(self._encode(r) for r in batch).encode()
        try:
            self._write(data)
        except OSError as exc:
            # A full disk must not take the data plane down; say so once per batch.
            logger.warning("access_log_write_failed", extra={"error": str(exc)})
            return
        self.lines_written += len(batch)

    def close(self) -> None:
        """Flush what is left; later records are dropped."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._on_close is not None:
            self._on_close()

    def _encode(self, r: _Record) -> str:
        """One JSON line, keys in ``FIELDS`` order, then the ``OPTIONAL_FIELDS``
        that are set. Hand-formatted: a dict through ``json`` costs several
        times more, and only strings need escaping."""
        path = r[3] if self._include_query else r[3].split("?", 1)[0]
        optional = "" if r[18] is None else f',"upstream_model":{_q(r[18])}'
        return (
            f'{{"start_time":"{self._timestamp(r[0])}","reporter":{_q(r[1])},'
            f'"method":{_q(r[2])},"path":{_q(path)},"protocol":{_q(r[4])},'
            f'"response_code":{int(r[5])},"response_flags":{_q(r[6])},'
            f'"bytes_received":{int(r[7])},"bytes_sent":{int(r[8])},'
            f'"duration_ms":{round(r[9] * 1000.0, 3)!r},"authority":{_q(r[10])},'
            f'"request_id":{_q(r[11])},"user_agent":{_q(r[12])},'
            f'"downstream_remote_address":{_q(r[13])},"upstream_host":{_q(r[14])},'
            f'"source_principal":{_q(r[15])},"destination_principal":{_q(r[16])},'
            f'"connection_security_policy":"{"mutual_tls" if r[17] else "none"}"{optional}}}\n'
        )

    def _timestamp(self, wall: float) -> str:
        """ISO 8601 with milliseconds; the date-and-seconds part is cached because a
        batch is mostly requests from the same second."""
        # Round to the nearest millisecond first: 1700000000.999 is not exact in binary.
        second, millis = divmod(int(wall * 1000.0 + 0.5), 1000)
        if second != self._cached_second:
            self._cached_second = second
            self._cached_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._cached_prefix}.{millis:03d}+00:00"
