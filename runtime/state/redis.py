"""Redis state backend (`redis://host:port/db`): one counter per account shared by hosts.

Every check-and-count is one Lua script (atomic on the server, so no race between
connections, processes or hosts); a batch of requests is one pipelined round trip of scripts.
Keys (prefix `mailcfg:`): `usage:<account>` hash of the current hour/day/month buckets and
counts (expires after ~32 days idle), `locks` hash account → reason, `once:<key>` (SET NX PX),
`stats:<day>` hash "<account>\\t<counter>" → value plus the `stats:days` set, and
`<host>:positions` hash (log offsets are per host, so they carry the host name).

Bucket numbers come from the caller's clock (`now`): hosts sharing one Redis need NTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from runtime.state.base import Consumption, StatRow, Window
from runtime.state.limits import (
    WINDOW_NAMES,
    LimitRequest,
    LimitResult,
    bucket_keys,
    check_windows,
)
from runtime.state.sqlite import group_stats

# KEYS: usage key, locks hash. ARGV: account, amount, force(0/1), lock(0/1), reason, now,
# hour_key, day_key, month_key, then limits for hour, day, month (-1 = not limited).
# Returns {status, exceeded_index, hour_n, day_n, month_n}; status 0 allowed, 1 exceeded,
# 2 exceeded and newly locked, 3 already locked.
_CONSUME = """
local acct, amount, force, lock = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4] == '1'
if lock and redis.call('HEXISTS', KEYS[2], acct) == 1 then return {3, 0, 0, 0, 0} end
local names = {'hour', 'day', 'month'}
local counts = {}
local row = redis.call('HMGET', KEYS[1], 'hour_k', 'hour_n', 'day_k', 'day_n', 'month_k', 'month_n')
local exceeded = 0
for i = 1, 3 do
  local n = 0
  if row[2 * i - 1] == ARGV[6 + i] then n = tonumber(row[2 * i]) end
  counts[i] = n
  local limit = tonumber(ARGV[9 + i])
  if exceeded == 0 and limit >= 0 and n + amount > limit then exceeded = i end
end
if exceeded == 0 or force then
  for i = 1, 3 do counts[i] = counts[i] + amount end
  redis.call('HSET', KEYS[1], 'hour_k', ARGV[7], 'hour_n', counts[1], 'day_k', ARGV[8],
             'day_n', counts[2], 'month_k', ARGV[9], 'month_n', counts[3])
  redis.call('EXPIRE', KEYS[1], 2764800)
end
local status = 0
if exceeded > 0 then
  status = 1
  if lock and not force then
    redis.call('HSET', KEYS[2], acct, ARGV[5])
    status = 2
  end
end
return {status, exceeded, counts[1], counts[2], counts[3]}
"""


_ONCE = """
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisStore:
    """`StateStore` + `LimitStore` on a Redis server."""

    def __init__(self, url: str, *, host: str = "", prefix: str = "mailcfg:") -> None:
        self.url = url
        self.r: redis.Redis[bytes] = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5
        )
        self.prefix = prefix
        self.host = host or "default"
        self._consume = self.r.register_script(_CONSUME)
        self._locks = prefix + "locks"
        self._once = self.r.register_script(_ONCE)

    def _args(self, r: LimitRequest, force: bool) -> tuple[list[str], list[Any]]:
        limits = [-1, -1, -1]
        for w in r.windows:
            limits[WINDOW_NAMES.index(w.name)] = w.limit
        keys = [self.prefix + "usage:" + r.account, self._locks]
        argv = [r.account, r.amount, int(force), int(r.lock), r.reason, r.now]
        return keys, argv + [str(k) for k in bucket_keys(r.now)] + limits

    @staticmethod
    def _result(raw: Sequence[int], windows: Sequence[Window]) -> LimitResult:
        status, exc, *counts = (int(x) for x in raw)
        limited = {w.name for w in windows}
        exceeded = WINDOW_NAMES[exc - 1] if exc and WINDOW_NAMES[exc - 1] in limited else None
        return LimitResult(
            allowed=status == 0,
            locked=status == 3,
            exceeded=exceeded,
            newly_locked=status == 2,
            counts=dict(zip(WINDOW_NAMES, counts, strict=True)),
        )

    def consume_limits(self, requests: Sequence[LimitRequest]) -> list[LimitResult]:
        for r in requests:
            check_windows(r.windows)
        pipe = self.r.pipeline(transaction=False)
        for r in requests:
            keys, argv = self._args(r, False)
            self._consume(keys=keys, args=argv, client=pipe)
        raws = pipe.execute()
        return [self._result(raw, r.windows) for raw, r in zip(raws, requests, strict=True)]

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
        keys, argv = self._args(req, force)
        res = self._result(self._consume(keys=keys, args=argv), windows)
        return Consumption(allowed=res.exceeded is None, exceeded=res.exceeded, counts=res.counts)

    def lock(self, account: str, reason: str, now: float) -> bool:
        return bool(self.r.hsetnx(self._locks, account, reason))

    def unlock(self, account: str) -> bool:
        return bool(self.r.hdel(self._locks, account))

    def is_locked(self, account: str) -> bool:
        return bool(self.r.hexists(self._locks, account))

    def locks(self) -> Mapping[str, str]:
        raw: dict[bytes, bytes] = self.r.hgetall(self._locks)
        return {k.decode(): v.decode() for k, v in sorted(raw.items())}

    def once(self, key: str, ttl: float, now: float) -> bool:
        # The value is the expiry by the caller's clock (like SQLite); PX only reclaims memory.
        px = max(1, int(ttl * 1000))
        return bool(self._once(keys=[self.prefix + "once:" + key], args=[now, now + ttl, px]))

    def add_stats(self, day: str, account: str, counters: Mapping[str, int]) -> None:
        pipe = self.r.pipeline(transaction=True)
        for name, n in counters.items():
            if n:
                pipe.hincrby(self.prefix + "stats:" + day, f"{account}\t{name}", n)
        pipe.sadd(self.prefix + "stats:days", day)
        pipe.execute()

    def set_stat(self, day: str, account: str, name: str, value: int) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.prefix + "stats:" + day, f"{account}\t{name}", value)
        pipe.sadd(self.prefix + "stats:days", day)
        pipe.execute()

    def stats(self, day: str | None = None, account: str | None = None) -> list[StatRow]:
        if day is not None:
            days = [day]
        else:
            raw_days: set[bytes] = self.r.smembers(self.prefix + "stats:days")
            days = sorted(d.decode() for d in raw_days)
        rows: list[tuple[str, str, str, int]] = []
        for d in days:
            raw: dict[bytes, bytes] = self.r.hgetall(self.prefix + "stats:" + d)
            for field, value in raw.items():
                acct, _, name = field.decode().partition("\t")
                if account is None or acct == account:
                    rows.append((d, acct, name, int(value)))
        rows.sort(key=lambda r: (r[0], r[1]))
        return group_stats(rows)

    def get_position(self, name: str) -> tuple[str, int] | None:
        raw = self.r.hget(f"{self.prefix}{self.host}:positions", name)
        if raw is None:
            return None
        identity, _, offset = raw.decode().rpartition("\t")
        return identity, int(offset)

    def set_position(self, name: str, identity: str, offset: int) -> None:
        self.r.hset(f"{self.prefix}{self.host}:positions", name, f"{identity}\t{offset}")

    def close(self) -> None:
        self.r.close()

    def record_log(
        self,
        name: str,
        identity: str,
        offset: int,
        rows: Mapping[tuple[str, str], Mapping[str, int]],
    ) -> None:
        """Add a chunk's counters and set the log position after it in one MULTI/EXEC: the
        server applies all of it or (connection lost before EXEC) none of it."""
        pipe = self.r.pipeline(transaction=True)
        days: set[str] = set()
        for (day, account), counters in rows.items():
            for counter, n in counters.items():
                if n:
                    pipe.hincrby(self.prefix + "stats:" + day, f"{account}\t{counter}", n)
                    days.add(day)
        if days:
            pipe.sadd(self.prefix + "stats:days", *sorted(days))
        pipe.hset(f"{self.prefix}{self.host}:positions", name, f"{identity}\t{offset}")
        pipe.execute()
