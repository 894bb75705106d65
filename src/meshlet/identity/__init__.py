"""Workload identity: SPIFFE IDs, the CA, X.509-SVIDs, join tokens and renewal.

Pure: nothing here reads the clock, sleeps or opens a socket. Callers pass
``now`` (seconds since the epoch, from ``meshlet.clock``) and any jitter.
Randomness only comes from ``os.urandom`` inside cryptography (keys, serials)
and ``secrets`` (token ids), where unpredictability is the point.
"""
