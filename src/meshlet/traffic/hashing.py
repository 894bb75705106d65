"""Consistent hashing for ``consistentHash`` load balancing: ring hash and Maglev.

Both map a 64-bit key hash to an endpoint index and, when that endpoint is
excluded (ejected), walk on to the next one, so only the requests of the
excluded endpoint move. The hash is BLAKE2b truncated to 64 bits: stable across
processes and Python versions (``hash()`` is salted per process), which matters
because every sidecar must send the same session to the same replica.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Collection, Sequence


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Ketama-style ring: ``ceil(size / n)`` points per endpoint (Envoy's
    minimum_ring_size semantics)."""

    __slots__ = ("_hashes", "_owners")

    def __init__(self, addresses: Sequence[str], size: int) -> None:
        points: list[tuple[int, int]] = []
        if addresses:
            per = max(1, math.ceil(size / len(addresses)))
            for idx, addr in enumerate(addresses):
                points.extend((stable_hash(f"{addr}_{k}"), idx) for k in range(per))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]

    def find(self, key_hash: int, skip: Collection[int] = ()) -> int:
        n = len(self._hashes)
        start = bisect.bisect_left(self._hashes, key_hash) % n
        for k in range(n):
            owner = self._owners[(start + k) % n]
            if owner not in skip:
                return owner
        return self._owners[start]


class MaglevTable:
    """Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4 "populate")."""

    __slots__ = ("_table",)

    def __init__(self, addresses: Sequence[str], size: int) -> None:
        n = len(addresses)
        table = [-1] * size
        if n:
            offsets = [stable_hash(a) % size for a in addresses]
            skips = [stable_hash(a + "#skip") % (size - 1) + 1 for a in addresses]
            nexts = [0] * n
            filled = 0
            while filled < size:
                for i in range(n):
                    c = (offsets[i] + nexts[i] * skips[i]) % size
                    while table[c] >= 0:
                        nexts[i] += 1
                        c = (offsets[i] + nexts[i] * skips[i]) % size
                    table[c] = i
                    nexts[i] += 1
                    filled += 1
                    if filled == size:
                        break
        self._table = table

    def find(self, key_hash: int, skip: Collection[int] = ()) -> int:
        size = len(self._table)
        start = key_hash % size
        for k in range(size):
            owner = self._table[(start + k) % size]
            if owner not in skip:
                return owner
        return self._table[start]
