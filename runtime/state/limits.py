"""The sending-limit rules, in one place for the policy service and the log-driven limits:
which windows an account's limits set, what one message charges, when a window is exceeded,
when an account is locked (and the reason recorded), and the batched check-and-count step.

Windows are fixed calendar buckets in the host's local time: the hour (`2024-05-01 13h`), the
day and the month. A counter resets when its bucket changes; all windows are counted on every
call, limits are checked only for the windows passed in. Fixed buckets (not sliding) make the
count one integer per window, an atomic compare-and-add on any backend, and match how an admin
reads "200 per day". The price: up to 2x the hourly limit can pass around a bucket boundary.

An account's `Limits` become a `LimitRule` (`limit_rule`). The policy service turns a request
into a `LimitRequest` (`LimitRule.request`): refused, and with `lock` the account locked, when a
window has no room. The log follower charges mail already sent with `charge_sent_mail`: always
counted (it is gone), then locked when a window is over and the rule says lock. Both count
`recipients` (at least 1) or 1 per message as the rule says, and a window is exceeded by the
same test (`first_exceeded`; the Redis script has the same test in Lua).

`LimitStore.consume_limits` evaluates a batch of requests in one backend transaction (SQLite) or
one round trip of atomic scripts (Redis): per request, a locked account is refused, otherwise
the amount is added if every window has room, and a refusal with `lock` set locks the account
in the same atomic step (so exactly one caller sees `newly_locked`).

What a lock records: `lock_record` packs its cause with the window, the limit and the count that
tripped it (the Redis script writes the same packing); `describe_lock` turns a record into the
message `locks`, the log and the alert show. A reason stored before records named the window
(plain text) reads as it is, so stores written by an older agent stay readable.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from runtime.state.base import Consumption, StateStore, Window
from schemas.policy import CountBy, Limits, OnExceed

WINDOW_NAMES: tuple[str, ...] = ("hour", "day", "month")
# Position of each window in `WINDOW_NAMES`, in `bucket_keys` and in the stores' count rows.
WINDOW_INDEX: Mapping[str, int] = {name: i for i, name in enumerate(WINDOW_NAMES)}
# The cause recorded with a lock by the policy service (the refused message is not counted).
LOCK_REASON = "sending limit exceeded by a refused message"
# First character of a packed lock record (`lock_record`); a plain reason never starts with it.
LOCK_RECORD_MARK = "\x1e"


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


def limit_windows(limits: Limits) -> tuple[Window, ...]:
    """The windows `limits` sets, in `WINDOW_NAMES` order (the first full one is named)."""
    return tuple(
        Window(name, limit)
        for name, limit in zip(
            WINDOW_NAMES, (limits.per_hour, limits.per_day, limits.per_month), strict=True
        )
        if limit is not None
    )


def first_exceeded(counts: Sequence[int], amount: int, windows: Sequence[Window]) -> str | None:
    """The first of `windows` without room for `amount` more, given the current `counts`
    (in `WINDOW_NAMES` order), or None when every window has room."""
    for w in windows:
        if counts[WINDOW_INDEX[w.name]] + amount > w.limit:
            return w.name
    return None


def current_windows(
    windows: Sequence[Window], sent: float, now: float
) -> tuple[Window, ...] | None:
    """The windows that still contain `sent` at `now` (a backlog read late must not lock an
    account for an hour already over); None when `sent` is of an earlier month (history: not
    charged). A `sent` after `now` (clock skew) counts as `now`."""
    current = bucket_keys(now)
    then = bucket_keys(min(sent, now))
    if then[2] != current[2]:
        return None
    return tuple(w for w in windows if then[WINDOW_INDEX[w.name]] == current[WINDOW_INDEX[w.name]])


def lock_record(cause: str, window: str, limit: int, count: int, unit: str) -> str:
    """What a lock stores: `cause`, and the `window` whose `limit` the `count` (of `unit`,
    "recipients" or "messages") went over. `describe_lock` reads it back."""
    return f"{LOCK_RECORD_MARK}{window} {limit} {count} {unit} {cause}"


def describe_lock(record: str) -> str:
    """The message of a stored lock: its cause, the window, the limit and the count; a plain
    reason (written by hand, or before records named the window) as it is."""
    if not record.startswith(LOCK_RECORD_MARK):
        return record
    fields = record[len(LOCK_RECORD_MARK) :].split(" ", 4)
    if len(fields) != 5:
        return record[len(LOCK_RECORD_MARK) :]
    window, limit, count, unit, cause = fields
    return f"{cause}: {count} {unit} this {window}, over the per-{window} limit of {limit}"


def window_limit(windows: Sequence[Window], name: str) -> int:
    """The limit of window `name` among `windows`."""
    return next(w.limit for w in windows if w.name == name)


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


class LimitRequest(NamedTuple):
    """One check-and-count; a named tuple rather than a frozen dataclass because the policy
    service builds one per decision, and a tuple is made in a third of the time."""

    account: str
    amount: int
    windows: Sequence[Window]
    now: float
    lock: bool  # lock the account when a window would be exceeded
    reason: str = ""  # the cause recorded with the lock (`lock_record`)
    unit: str = "recipients"  # what `amount` counts: "recipients" or "messages"

    def lock_record(self, exceeded: str, counts: Sequence[int]) -> str:
        """The record of the lock this request sets when window `exceeded` has no room, given
        the window's counts before it (in `WINDOW_NAMES` order)."""
        count = counts[WINDOW_INDEX[exceeded]] + self.amount
        return lock_record(
            self.reason, exceeded, window_limit(self.windows, exceeded), count, self.unit
        )


class LimitResult(NamedTuple):
    """`allowed`: counted. Otherwise `locked` (account was already locked: nothing checked or
    counted) or `exceeded` names the first full window; `newly_locked` is True for the one
    request that locked the account. A named tuple, as `LimitRequest` is: one per decision."""

    allowed: bool
    locked: bool
    exceeded: str | None
    newly_locked: bool
    counts: Mapping[str, int]
    lock_reason: str = ""  # with `newly_locked`: the lock's message (`describe_lock`)


@dataclass(frozen=True, slots=True)
class LimitRule:
    """An account's sending limits as both the policy service and the log follower apply
    them: its windows, whether an exceeded window locks the account, and what is counted."""

    windows: tuple[Window, ...]
    lock: bool
    by_messages: bool
    unit: str = field(init=False, repr=False, compare=False)  # what `amount` counts

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", "messages" if self.by_messages else "recipients")

    def amount(self, recipients: int) -> int:
        """Units one message to `recipients` recipients charges: 1 per message, or its
        recipients (at least 1)."""
        return 1 if self.by_messages else max(1, recipients)

    def request(self, account: str, recipients: int, now: float) -> LimitRequest:
        """The policy service's check-and-count of one message before it is sent."""
        # The fields in LimitRequest's order, without its Python-level __new__ (one per
        # decision: about a third of this method's time).
        return tuple.__new__(
            LimitRequest,
            (
                account,
                self.amount(recipients),
                self.windows,
                now,
                self.lock,
                LOCK_REASON,
                self.unit,
            ),
        )


def limit_rule(limits: Limits) -> LimitRule:
    return LimitRule(
        windows=limit_windows(limits),
        lock=limits.on_exceed is OnExceed.LOCK,
        by_messages=limits.count is CountBy.MESSAGES,
    )


def charge_sent_mail(
    store: StateStore,
    account: str,
    rule: LimitRule,
    recipients: int,
    sent: float,
    now: float,
    qid: str,
) -> str | None:
    """Charge mail already sent (seen in the log, never checked by the policy service) to
    `account`: counted in the windows still current (`current_windows`) whatever their room,
    and the account locked when one is now over and the rule says lock. Returns the lock's
    message when this call locked the account, else None."""
    windows = current_windows(rule.windows, sent, now)
    if windows is None:
        return None
    result = store.consume(account, rule.amount(recipients), windows, now, force=True)
    if result.exceeded is None or not rule.lock:
        return None
    window = result.exceeded
    record = lock_record(
        f"mail {qid} submitted with sendmail",
        window,
        window_limit(windows, window),
        result.counts[window],  # already counted: the mail is gone
        rule.unit,
    )
    return describe_lock(record) if store.lock(account, record, now) else None


class BatchConsume(ABC):
    """`StateStore.consume` of a store whose check-and-count runs in batches (`run_batch`):
    one request, without the lock check, the amount added whatever the room with `force`."""

    @abstractmethod
    def run_batch(
        self, requests: Sequence[LimitRequest], *, check_lock: bool, force: bool
    ) -> list[LimitResult]:
        """The batch's check-and-count steps, in order, in one transaction."""

    def consume(
        self,
        account: str,
        amount: int,
        windows: Sequence[Window],
        now: float,
        *,
        force: bool = False,
    ) -> Consumption:
        check_windows(windows)
        req = LimitRequest(account, amount, windows, now, lock=False)
        res = self.run_batch([req], check_lock=False, force=force)[0]
        return Consumption(allowed=res.exceeded is None, exceeded=res.exceeded, counts=res.counts)


class LimitStore(StateStore, Protocol):
    def consume_limits(self, requests: Sequence[LimitRequest]) -> list[LimitResult]: ...
