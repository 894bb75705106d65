"""The log-linear histogram agrees with numpy on known data within one bucket."""

from __future__ import annotations

import numpy as np
import pytest

from meshlet.bench.histogram import Histogram

PERCENTILES = (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0)


def _datasets() -> list[object]:
    rng = np.random.default_rng(7)
    return [
        pytest.param(np.arange(1, 10_001), id="uniform-ramp"),
        pytest.param(
            rng.lognormal(mean=12.0, sigma=1.0, size=20_000).astype(np.int64), id="lognormal-ns"
        ),
        pytest.param(rng.exponential(scale=300_000, size=5_000).astype(np.int64), id="exponential"),
        pytest.param(np.array([5] * 990 + [50_000_000] * 10), id="bimodal-tail"),
        pytest.param(np.array([123_456_789]), id="single"),
    ]


@pytest.mark.parametrize("data", _datasets())
@pytest.mark.parametrize("p", PERCENTILES)
def test_percentiles_match_numpy_within_bucket_precision(data: np.ndarray, p: float) -> None:
    hist = Histogram.of(int(v) for v in data)
    # HdrHistogram's rank definition is numpy's "inverted_cdf" (smallest x with CDF >= p).
    reference = int(np.percentile(data, p, method="inverted_cdf"))
    ours = hist.percentile(p)
    assert ours >= reference
    assert ours - reference <= max(1, reference * 2 / (1 << hist.bits))


def test_min_max_count_mean_are_exact() -> None:
    values = [3, 1_000, 7_777_777, 42]
    hist = Histogram.of(values)
    assert (hist.min, hist.max, hist.count) == (3, 7_777_777, 4)
    assert hist.mean == pytest.approx(sum(values) / 4)


def test_every_value_lands_in_a_bucket_that_contains_it() -> None:
    hist = Histogram(sub_bucket_bits=4)
    for value in [0, 1, 15, 16, 17, 31, 32, 33, 1000, 2**40 + 12345]:
        low, high = hist.bucket_bounds(hist.index_of(value))
        assert low <= value <= high
        assert high - low + 1 <= max(1, value * 2 / 16)


def test_bucket_indexes_are_monotonic() -> None:
    hist = Histogram(sub_bucket_bits=3)
    indexes = [hist.index_of(v) for v in range(5000)]
    assert indexes == sorted(indexes)


def test_merge_equals_recording_everything_in_one() -> None:
    rng = np.random.default_rng(3)
    a_vals = rng.integers(1, 10**7, size=3000)
    b_vals = rng.integers(10**5, 10**9, size=2000)
    a, b = Histogram.of(int(v) for v in a_vals), Histogram.of(int(v) for v in b_vals)
    a.merge(b)
    whole = Histogram.of(int(v) for v in np.concatenate([a_vals, b_vals]))
    assert a.to_dict() == whole.to_dict()
    assert [a.percentile(p) for p in PERCENTILES] == [whole.percentile(p) for p in PERCENTILES]


def test_merge_into_empty_takes_the_others_min() -> None:
    empty, other = Histogram(), Histogram.of([500, 900])
    empty.merge(other)
    assert (empty.min, empty.max, empty.count) == (500, 900, 2)


def test_merge_refuses_different_precision() -> None:
    with pytest.raises(ValueError, match="precisions"):
        Histogram(sub_bucket_bits=4).merge(Histogram.of([1], sub_bucket_bits=5))


def test_round_trip_through_dict() -> None:
    hist = Histogram.of([1, 2, 3, 10**6, 10**9])
    again = Histogram.from_dict(hist.to_dict())
    assert again.to_dict() == hist.to_dict()
    assert again.percentile(99) == hist.percentile(99)


def test_from_dict_rejects_counts_that_do_not_add_up() -> None:
    data = Histogram.of([1, 2]).to_dict()
    data["total"] = 5
    with pytest.raises(ValueError, match="add up"):
        Histogram.from_dict(data)


def test_empty_histogram_reads_zero() -> None:
    hist = Histogram()
    assert hist.percentile(99) == 0
    assert hist.summary()["count"] == 0
    assert list(hist.cdf()) == []


def test_cdf_is_ascending_and_ends_at_one() -> None:
    hist = Histogram.of(range(1, 1000, 7))
    points = list(hist.cdf())
    assert [v for v, _ in points] == sorted(v for v, _ in points)
    assert points[-1] == (hist.max, 1.0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [pytest.param(-1, "negative", id="negative-value")],
)
def test_record_rejects_bad_values(bad: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Histogram().record(bad)


def test_percentile_outside_range_is_refused() -> None:
    with pytest.raises(ValueError, match="percentile"):
        Histogram.of([1]).percentile(101)
