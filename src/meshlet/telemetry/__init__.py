"""Golden metrics, access logs and audit records.

Everything here is cheap on the hot path: counters are plain dict updates keyed
by label tuples and rendered only when scraped; log lines are buffered and
written in batches. Nothing here touches sockets.
"""
