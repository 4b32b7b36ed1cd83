"""The `StateStore` interface shared by the policy service and the log follower.

Backends: `runtime.state.sqlite.SqliteStore` (embedded default) and
`runtime.state.redis.RedisStore` (shared by several hosts). `open_store(dsn)` picks one.
Every method is one atomic step on the backend; callers never read-then-write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.stats import STAT_COUNTERS

__all__ = ["STAT_COUNTERS", "Consumption", "StatRow", "StateStore", "Window"]


@dataclass(frozen=True, slots=True)
class Window:
    """A sending-limit window: at most `limit` units per `name` ("hour" | "day" | "month")."""

    name: str
    limit: int


@dataclass(frozen=True, slots=True)
class Consumption:
    """Result of `consume`: `allowed` False names the first window that would be exceeded;
    nothing was counted then. `counts` are the window totals after the call."""

    allowed: bool
    exceeded: str | None
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class StatRow:
    day: str  # YYYY-MM-DD
    account: str
    counters: Mapping[str, int]


class StateStore(Protocol):
    def consume(
        self,
        account: str,
        amount: int,
        windows: Sequence[Window],
        now: float,
        *,
        force: bool = False,
    ) -> Consumption:
        """Atomically: if every window has room for `amount`, add it to all of them and allow;
        otherwise add nothing and refuse. With `force` (mail already sent, seen in the log)
        always add, and report whether a window is now over its limit."""
        ...

    def lock(self, account: str, reason: str, now: float) -> bool:
        """Lock `account`; True if it was not locked before (so exactly one alert is sent)."""
        ...

    def unlock(self, account: str) -> bool:
        """Lift a lock; True if there was one."""
        ...

    def is_locked(self, account: str) -> bool: ...

    def locks(self) -> Mapping[str, str]:
        """Locked accounts → the lock's message (`runtime.state.limits.describe_lock`)."""
        ...

    def once(self, key: str, ttl: float, now: float) -> bool:
        """Ledger of things done at most once per period (notices, alerts): True the first time
        `key` is seen within `ttl` seconds, False after."""
        ...

    def add_stats(self, day: str, account: str, counters: Mapping[str, int]) -> None:
        """Add to per-account per-day counters (names from STAT_COUNTERS)."""
        ...

    def set_stat(self, day: str, account: str, name: str, value: int) -> None:
        """Set a gauge counter (e.g. `queued`, read from the queue, not the log)."""
        ...

    def stats(self, day: str | None = None, account: str | None = None) -> list[StatRow]: ...

    def get_position(self, name: str) -> tuple[str, int] | None:
        """The log follower's saved (file identity, offset) for `name`."""
        ...

    def set_position(self, name: str, identity: str, offset: int) -> None: ...

    def record_log(
        self,
        name: str,
        identity: str,
        offset: int,
        rows: Mapping[tuple[str, str], Mapping[str, int]],
    ) -> None:
        """Add counters (`(day, account)` → name → n, as `add_stats`) and set the log position
        `name` in ONE atomic step, so a crash between them cannot count a chunk twice."""
        ...

    def close(self) -> None: ...
