"""Shared test fixtures, and the Hypothesis profile every property test runs under."""

from hypothesis import HealthCheck, settings

# CI runs on a shared, possibly loaded 2-core machine. Hypothesis's default 200 ms
# deadline (and its "too slow" health check) judge wall-clock time, so a test that
# does real work (crypto, parsing, a compiled policy) fails there when the scheduler
# stalls it: DeadlineExceeded, or Flaky when the rerun is fast. Time is not what
# these tests check; the benchmarks measure it. A test's own @settings still
# inherits this profile for whatever it does not set.
settings.register_profile("meshlet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("meshlet")
