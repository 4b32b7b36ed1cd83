"""Login throttling per client IP and per address (the rule the README states).

1. A client IP with `ip_limit` failed logins within `window` seconds is refused (its password
   is not even checked) until the oldest of them is older than `window`.
2. An address with `address_limit` failed logins within `window` from IPs it does not know
   then takes one attempt per `address_pause` seconds from such IPs, however many there are.
3. An IP that logged in to the address successfully within `known_for` seconds is known to it:
   rule 2 does not apply to it, so a wave of wrong passwords from elsewhere never locks the
   real user out of their usual place, and a new place waits at most `address_pause`.

State is in memory (a restart forgets it), bounded by `max_keys` per table.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    ip_limit: int = 10
    address_limit: int = 5
    window: float = 600.0
    address_pause: float = 30.0
    known_for: float = 30 * 86400.0
    max_keys: int = 100_000


@dataclass(slots=True)
class _AddressState:
    failures: deque[float] = field(default_factory=deque)
    next_slot: float = 0.0


class LoginThrottle:
    """Thread-safe; the app owns one instance."""

    def __init__(self, rule: ThrottleRule, clock: Callable[[], float] = time.monotonic) -> None:
        self.rule = rule
        self._clock = clock
        self._lock = threading.Lock()
        self._ips: dict[str, deque[float]] = {}
        self._addresses: dict[str, _AddressState] = {}
        self._known: dict[tuple[str, str], float] = {}

    def admit(self, address: str, ip: str) -> float:
        """0 when this attempt may check a password (and takes the address's slot when it is
        throttled), else the seconds to wait."""
        address = address.lower()
        with self._lock:
            now = self._clock()
            failures = self._recent(self._ips.get(ip), now)
            if len(failures) >= self.rule.ip_limit:
                return failures[0] + self.rule.window - now
            if self._is_known(address, ip, now):
                return 0.0
            state = self._addresses.get(address)
            if state is None or len(self._recent(state.failures, now)) < self.rule.address_limit:
                return 0.0
            if now < state.next_slot:
                return state.next_slot - now
            state.next_slot = now + self.rule.address_pause
            return 0.0

    def record_failure(self, address: str, ip: str) -> None:
        address = address.lower()
        with self._lock:
            now = self._clock()
            self._bounded(self._ips).setdefault(ip, deque()).append(now)
            if not self._is_known(address, ip, now):
                state = self._bounded(self._addresses).setdefault(address, _AddressState())
                state.failures.append(now)

    def record_success(self, address: str, ip: str) -> None:
        with self._lock:
            self._bounded(self._known)[(address.lower(), ip)] = self._clock()

    def _is_known(self, address: str, ip: str, now: float) -> bool:
        since = self._known.get((address, ip))
        return since is not None and now - since < self.rule.known_for

    def _recent(self, failures: deque[float] | None, now: float) -> deque[float]:
        if failures is None:
            return deque()
        while failures and now - failures[0] >= self.rule.window:
            failures.popleft()
        return failures

    def _bounded(self, table: dict[K, V]) -> dict[K, V]:
        """`table`, with its oldest tenth dropped when full: a flood of made-up addresses or
        IPs cannot grow memory without bound (it forgets old entries first)."""
        if len(table) >= self.rule.max_keys:
            for key in list(table)[: max(1, self.rule.max_keys // 10)]:
                del table[key]
        return table
