"""Sending-limit windows and the batched check-and-count step the policy service uses.

Windows are fixed calendar buckets in the host's local time: the hour (`2024-05-01 13h`), the
day and the month. A counter resets when its bucket changes; all windows are counted on every
call, limits are checked only for the windows passed in. Fixed buckets (not sliding) make the
count one integer per window, an atomic compare-and-add on any backend, and match how an admin
reads "200 per day". The price: up to 2x the hourly limit can pass around a bucket boundary.

`LimitStore.consume_limits` evaluates a batch of requests in one backend transaction (SQLite) or
one round trip of atomic scripts (Redis): per request, a locked account is refused, otherwise
the amount is added if every window has room, and a refusal with `lock` set locks the account
in the same atomic step (so exactly one caller sees `newly_locked`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.state.base import StateStore, Window

WINDOW_NAMES: tuple[str, ...] = ("hour", "day", "month")


def bucket_keys(now: float) -> tuple[int, int, int]:
    """(hour, day, month) buckets of `now` in local time, e.g. 2024050113, 20240501, 202405."""
    t = time.localtime(now)
    month = t.tm_year * 100 + t.tm_mon
    day = month * 100 + t.tm_mday
    return day * 100 + t.tm_hour, day, month


class BucketClock:
    """`bucket_keys` with the last second's answer kept: under load thousands of decisions
    fall in the same second, and `time.localtime` is the costly part. Local-time buckets
    change only at whole seconds, so one second always has one answer."""

    __slots__ = ("_keys", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._keys = (0, 0, 0)

    def keys(self, now: float) -> tuple[int, int, int]:
        second = int(now)
        if second != self._second:
            self._keys = bucket_keys(second)
            self._second = second
        return self._keys


def check_windows(windows: Sequence[Window]) -> None:
    for w in windows:
        if w.name not in WINDOW_NAMES:
            raise ValueError(f"unknown limit window {w.name!r} (expected one of {WINDOW_NAMES})")


def check_batch(requests: Sequence[LimitRequest]) -> None:
    """`check_windows` of every request; requests of one account policy share one windows
    object, so that is checked once."""
    checked: Sequence[Window] | None = None
    for r in requests:
        if r.windows is not checked:
            check_windows(r.windows)
            checked = r.windows


@dataclass(frozen=True, slots=True)
class LimitRequest:
    account: str
    amount: int
    windows: Sequence[Window]
    now: float
    lock: bool  # lock the account when a window would be exceeded
    reason: str = ""  # lock reason recorded with the lock


@dataclass(frozen=True, slots=True)
class LimitResult:
    """`allowed`: counted. Otherwise `locked` (account was already locked: nothing checked or
    counted) or `exceeded` names the first full window; `newly_locked` is True for the one
    request that locked the account."""

    allowed: bool
    locked: bool
    exceeded: str | None
    newly_locked: bool
    counts: Mapping[str, int]


class LimitStore(StateStore, Protocol):
    def consume_limits(self, requests: Sequence[LimitRequest]) -> list[LimitResult]: ...
