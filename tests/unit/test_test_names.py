"""Every test file has a basename of its own: pytest imports them by basename (the test
folders are not packages), so two `test_x.py` in different folders stop the whole run at
collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_file_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
