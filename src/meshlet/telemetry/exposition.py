"""The Prometheus text format (0.0.4): writing it, and merging several processes' texts.

Writing: the small formatting pieces :class:`~meshlet.telemetry.metrics.GoldenMetrics`
builds its scrape from (family headers, cumulative histogram lines, label escaping).

Merging: with ``--workers N`` every worker counts its own traffic in its own
memory (a shared counter would put a lock or an atomic on every request) and
the parent serves one ``/stats/prometheus`` for the whole sidecar, as Envoy and
Linkerd do whatever their concurrency. :class:`WorkerMerge` sums the workers'
texts sample by sample: counters, histogram buckets, sums and counts add up
exactly because every worker uses the same bucket bounds; gauges add up
(requests in flight, memory per ``worker`` label) except the few in
``GAUGE_MERGE`` where a sum means nothing (a certificate's seconds to expiry:
the soonest, i.e. the minimum, is the one that matters).

Counters must never go backwards while the parent lives, or ``rate()`` would see
a reset that did not happen. So the last text each worker answered is kept: a
worker that does not answer a scrape (busy past the deadline, or already gone)
contributes its last cumulative samples (its gauges are dropped: they describe a
present that is unknown), and when a worker index comes back with a new process
id its predecessor's last cumulative samples are kept as a retired total. What a
worker counted after its last answered scrape and before it died is lost; that
is the one loss, and it only makes a counter grow more slowly, never shrink.

Samples are keyed by their full text before the value (name and label set
exactly as written); every worker renders labels with the same code, so equal
series have equal keys. Timestamps are not supported (meshlet never writes any).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

# Gauges where summing over workers is wrong, and what to do instead.
GAUGE_MERGE: dict[str, Callable[[float, float], float]] = {
    "meshlet_certificate_expiry_seconds": min,
}
# Kinds whose samples only grow within one process: summed, and kept from a
# worker that stopped answering.
CUMULATIVE_KINDS = frozenset({"counter", "histogram", "summary"})


# -- writing ---------------------------------------------------------------------


def header(name: str, kind: str, help_text: str) -> Iterator[str]:
    yield f"# HELP {name} {help_text}\n"
    yield f"# TYPE {name} {kind}\n"


def histogram_lines(
    name: str,
    labels: str,
    bounds: tuple[float, ...],
    buckets: list[int],
    count: int,
    total: float,
) -> Iterator[str]:
    """One series' cumulative ``_bucket`` lines, then ``_sum`` and ``_count``;
    ``buckets`` holds per-bucket (non-cumulative) counts, ``labels`` rendered text."""
    running = 0
    prefix = f"{name}_bucket{{{labels},le="
    for le, n in zip(le_text(bounds), buckets, strict=False):
        running += n
        yield f"{prefix}{le}}} {running}\n"
    yield f'{name}_bucket{{{labels},le="+Inf"}} {count}\n'
    yield f"{name}_sum{{{labels}}} {fmt_number(total)}\n"
    yield f"{name}_count{{{labels}}} {count}\n"


_LE_CACHE: dict[tuple[float, ...], tuple[str, ...]] = {}


def le_text(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The quoted ``le`` values of a bucket layout, formatted once per layout."""
    text = _LE_CACHE.get(bounds)
    if text is None:
        text = _LE_CACHE[bounds] = tuple(f'"{_fmt_bound(b)}"' for b in bounds)
    return text


def _fmt_bound(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def fmt_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def escape(value: str) -> str:
    """Label value escaping of the text format: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def join_labels(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{escape(v)}"' for k, v in pairs)


# -- reading -----------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Family:
    """One metric family as read: its kind, help and samples (series key -> value)."""

    name: str
    kind: str = "untyped"
    help_text: str = ""
    samples: dict[str, float] = field(default_factory=dict)


def parse(text: bytes) -> dict[str, Family]:
    """Families by name, in the order the text gives them."""
    families: dict[str, Family] = {}
    current: Family | None = None
    for raw in text.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = families.setdefault(parts[2], Family(name=parts[2]))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "TYPE":
                    current.kind = rest.strip() or "untyped"
                else:
                    current.help_text = rest
            continue
        key, _, value = line.rpartition(" ")
        if not key:
            continue
        name = key.split("{", 1)[0]
        if current is None or not _belongs(name, current):
            current = families.setdefault(name, Family(name=name))
        current.samples[key] = _number(value)
    return families


def _belongs(sample_name: str, family: Family) -> bool:
    if sample_name == family.name:
        return True
    suffix = sample_name[len(family.name) :] if sample_name.startswith(family.name) else ""
    return suffix in ("_bucket", "_sum", "_count", "_total", "_created")


def _number(token: str) -> float:
    try:
        return int(token)
    except ValueError:
        return float(token)  # also "+Inf", "-Inf", "NaN"


def render(families: Iterable[Family]) -> bytes:
    out: list[str] = []
    for family in families:
        if family.help_text:
            out.append(f"# HELP {family.name} {family.help_text}\n")
        out.append(f"# TYPE {family.name} {family.kind}\n")
        out += [f"{key} {fmt_number(value)}\n" for key, value in family.samples.items()]
    return "".join(out).encode()


def merge_into(total: dict[str, Family], families: Iterable[Family], *, gauges: bool) -> None:
    """Add ``families`` to ``total`` sample by sample (gauges only if ``gauges``)."""
    for family in families:
        cumulative = family.kind in CUMULATIVE_KINDS
        if not cumulative and not gauges:
            continue
        into = total.get(family.name)
        if into is None:
            into = total[family.name] = Family(
                name=family.name, kind=family.kind, help_text=family.help_text
            )
        combine = None if cumulative else GAUGE_MERGE.get(family.name)
        samples = into.samples
        for key, value in family.samples.items():
            had = samples.get(key)
            if had is None:
                samples[key] = value
            else:
                samples[key] = combine(had, value) if combine is not None else had + value


# -- one merged view of N workers ----------------------------------------------------


@dataclass(slots=True)
class _Answer:
    pid: int
    families: dict[str, Family]


# Requests per worker, derived from each worker's istio_requests_total at merge
# time: SO_REUSEPORT spreads connections by a hash, not by load, so a skew
# between workers is worth seeing (the request path pays nothing for it).
PER_WORKER_FAMILY = "meshlet_worker_requests_total"
_REQUESTS_FAMILY = "istio_requests_total"


class WorkerMerge:
    """The ``--workers`` parent's memory of each worker's last scrape (see the
    module docstring for why it keeps them)."""

    __slots__ = ("_last", "_retired", "_retired_requests")

    def __init__(self) -> None:
        self._last: dict[int, _Answer] = {}
        self._retired: dict[str, Family] = {}
        self._retired_requests: dict[int, float] = {}

    def merge(self, answers: Mapping[int, tuple[int, bytes] | None], extra: bytes = b"") -> bytes:
        """One text for the whole sidecar. ``answers`` maps each worker index to
        ``(pid, text)`` when it answered this scrape, or None when it did not;
        ``extra`` is the parent's own families (its process gauges)."""
        fresh: set[int] = set()
        for index, answer in answers.items():
            if answer is None:
                continue
            pid, text = answer
            previous = self._last.get(index)
            if previous is not None and previous.pid != pid:  # a restarted worker
                merge_into(self._retired, previous.families.values(), gauges=False)
                self._retired_requests[index] = self._requests(index)
            self._last[index] = _Answer(pid, parse(text))
            fresh.add(index)
        total: dict[str, Family] = {}
        merge_into(total, self._retired.values(), gauges=False)
        for index in sorted(self._last):
            merge_into(total, self._last[index].families.values(), gauges=index in fresh)
        per_worker = Family(
            name=PER_WORKER_FAMILY, kind="counter", help_text="Requests handled, by worker."
        )
        for index in sorted(self._last):
            per_worker.samples[f'{PER_WORKER_FAMILY}{{worker="{index}"}}'] = self._requests(index)
        total[PER_WORKER_FAMILY] = per_worker
        if extra:
            merge_into(total, parse(extra).values(), gauges=True)
        return render(total.values())

    def _requests(self, index: int) -> float:
        """Worker ``index``'s requests so far, its predecessors' included."""
        answer = self._last.get(index)
        family = answer.families.get(_REQUESTS_FAMILY) if answer is not None else None
        own = sum(family.samples.values()) if family is not None else 0
        return self._retired_requests.get(index, 0) + own
