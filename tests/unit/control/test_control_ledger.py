"""Used join tokens survive a restart; expired ones are forgotten."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlet.control.ledger import load_ledger, record_used
from meshlet.errors import IdentityError


def test_ledger_round_trip_prunes_expired_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "used-tokens"
    record_used(path, "a", 100.0)
    record_used(path, "b", 300.0)
    with path.open("a") as fh:
        fh.write("c 4")  # a torn last line: "c" expires at 4, already past
        fh.write("\nd")  # no expiry at all
    ledger = load_ledger(path, now=200.0)
    assert "b" in ledger
    assert "a" not in ledger  # expired: refused for expiry before the ledger is asked
    assert len(ledger) == 1
    with pytest.raises(IdentityError, match="already used"):
        ledger.consume("b", expires_at=300.0, now=200.0)
    assert path.read_text() == "b 300.0\n"  # rewritten without the dead entries
    assert path.stat().st_mode & 0o777 == 0o600


def test_missing_ledger_is_empty_and_unwritable_one_refuses(tmp_path: Path) -> None:
    assert len(load_ledger(tmp_path / "nothing", now=0.0)) == 0
    with pytest.raises(IdentityError, match="cannot record"):
        record_used(tmp_path / "no-such-dir" / "used-tokens", "x", 1.0)
