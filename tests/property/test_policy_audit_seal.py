"""Every sealed audit line, whatever the record, verifies: its hash is SHA-256 of
the compact JSON of the line without ``hash``, as ``verify`` recomputes it."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.telemetry.audit import GENESIS, _dumps, seal

values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=5), max_size=3),
)  # fmt: skip
records = st.dictionaries(
    st.sampled_from(["time", "seq", "prev", "hash", "path", "decision", "rule", "é"])
    | st.text(max_size=8),
    values,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(record=records, wall=st.none() | st.floats(0, 2e9), seq=st.integers(0, 10**9))
def test_sealed_lines_verify(record: dict[str, object], wall: float | None, seq: int) -> None:
    line, digest = seal(record, seq=seq, prev=GENESIS, wall=wall)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj.pop("hash") == digest
    assert hashlib.sha256(_dumps(obj).encode()).hexdigest() == digest
    assert (obj["seq"], obj["prev"]) == (seq, GENESIS)
    for key, value in record.items():
        if key not in ("seq", "prev", "hash"):
            assert obj[key] == value
