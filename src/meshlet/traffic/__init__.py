"""Traffic management, pure: route tables and matchers, weighted splits, retries and
their budget, timeouts, faults, mirroring, balancers, circuit breaking, outlier
detection and model-name extraction.

Nothing here does I/O or reads a clock: the proxy passes in the time and a random
source and performs what the returned plans and decisions say (docs/traffic.md,
"Integration").
"""
