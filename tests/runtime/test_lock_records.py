"""What a lock records and how it reads back (`runtime.state.limits.lock_record`,
`describe_lock`): the window, the limit and the count that tripped it; a reason stored by an
older agent (plain text) and a damaged record read without an error."""

from __future__ import annotations

import pytest

from runtime.state.base import Window
from runtime.state.limits import LOCK_RECORD_MARK, LimitRequest, describe_lock, lock_record


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            lock_record("sending limit exceeded", "day", 200, 201, "recipients"),
            "sending limit exceeded: 201 recipients this day, over the per-day limit of 200",
        ),
        # Stored before records named the window, or set by hand: shown as it is.
        ("sending limit exceeded", "sending limit exceeded"),
        ("", ""),
        # Damaged (too few fields): the text after the mark, never an exception.
        (f"{LOCK_RECORD_MARK}hour 3", "hour 3"),
    ],
)
def test_describe_lock(record: str, message: str) -> None:
    assert describe_lock(record) == message


def test_a_request_records_the_count_with_its_own_amount() -> None:
    """A refused message is not counted: the count that tripped the lock is the window's
    count before it plus its amount."""
    request = LimitRequest(
        "a@x.org", 3, (Window("hour", 10), Window("month", 50)), 0.0, lock=True, reason="r"
    )
    assert describe_lock(request.lock_record("month", (1, 2, 48))) == (
        "r: 51 recipients this month, over the per-month limit of 50"
    )
