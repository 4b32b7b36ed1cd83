"""Redis state backend (`redis://host:port/db`): one counter per account shared by hosts.

Every check-and-count runs in a Lua script (atomic on the server, so no race between
connections, processes or hosts); a batch of requests is ONE script call that does them in
order, so a batch costs one command and one round trip. The script touches several keys, so
it needs a single Redis server, not a Redis Cluster.
A locked account is refused by the policy service (`consume_limits`), whatever its
`on_exceed`; the log follower's `consume` counts mail already sent and ignores locks.
Keys (prefix `mailcfg:`): `usage:<account>` hash of the current hour/day/month buckets and
counts (expires after ~32 days idle), `locks` hash account → reason, `once:<key>` (SET NX PX),
`stats:<day>` hash "<account>\\t<counter>" → value plus the `stats:days` set, and
`<host>:positions` hash (log offsets are per host, so they carry the host name).

Bucket numbers come from the caller's clock (`now`): hosts sharing one Redis need NTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from runtime.state.base import Consumption, StatRow, Window
from runtime.state.limits import (
    WINDOW_NAMES,
    BucketClock,
    LimitRequest,
    LimitResult,
    check_batch,
    check_windows,
)
from runtime.state.sqlite import group_stats

# One batch of check-and-count steps, in order, atomically (a script runs alone on the server).
# KEYS[1]: the locks hash; KEYS[1 + i]: usage hash of request i.
# ARGV[1]: number of requests; then 12 fields per request: account, amount, check_lock (0/1),
# force (0/1), lock_on_exceed (0/1), reason, hour_key, day_key, month_key, then the limits of
# hour, day, month (-1 = not limited).
# Returns 5 integers per request: status (0 allowed, 1 exceeded, 2 exceeded and newly locked,
# 3 already locked), index of the exceeded window (1-3, 0 none), hour, day and month counts.
_CONSUME_BATCH = """
local out = {}
local n = tonumber(ARGV[1])
for r = 0, n - 1 do
  local a = 1 + r * 12
  local acct, amount = ARGV[a + 1], tonumber(ARGV[a + 2])
  local force, lock = ARGV[a + 4] == '1', ARGV[a + 5] == '1'
  local key = KEYS[2 + r]
  if ARGV[a + 3] == '1' and redis.call('HEXISTS', KEYS[1], acct) == 1 then
    for _, v in ipairs({3, 0, 0, 0, 0}) do out[#out + 1] = v end
  else
    local row = redis.call('HMGET', key, 'hour_k', 'hour_n', 'day_k', 'day_n', 'month_k', 'month_n')
    local counts, exceeded = {}, 0
    for i = 1, 3 do
      local c = 0
      if row[2 * i - 1] == ARGV[a + 6 + i] then c = tonumber(row[2 * i]) end
      counts[i] = c
      local limit = tonumber(ARGV[a + 9 + i])
      if exceeded == 0 and limit >= 0 and c + amount > limit then exceeded = i end
    end
    if exceeded == 0 or force then
      for i = 1, 3 do counts[i] = counts[i] + amount end
      redis.call('HSET', key, 'hour_k', ARGV[a + 7], 'hour_n', counts[1], 'day_k', ARGV[a + 8],
                 'day_n', counts[2], 'month_k', ARGV[a + 9], 'month_n', counts[3])
      redis.call('EXPIRE', key, 2764800)
    end
    local status = 0
    if exceeded > 0 then
      status = 1
      if lock and not force then
        redis.call('HSET', KEYS[1], acct, ARGV[a + 6])
        status = 2
      end
    end
    out[#out + 1] = status
    out[#out + 1] = exceeded
    out[#out + 1] = counts[1]
    out[#out + 1] = counts[2]
    out[#out + 1] = counts[3]
  end
end
return out
"""


_ONCE = """
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

_INDEX = {"hour": 0, "day": 1, "month": 2}


class RedisStore:
    """`StateStore` + `LimitStore` on a Redis server."""

    def __init__(self, url: str, *, host: str = "", prefix: str = "mailcfg:") -> None:
        self.url = url
        self.r: redis.Redis[bytes] = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5
        )
        self.prefix = prefix
        self.host = host or "default"
        self._consume = self.r.register_script(_CONSUME_BATCH)
        self._locks = prefix + "locks"
        self._once = self.r.register_script(_ONCE)
        self._clock = BucketClock()

    def _batch_args(
        self, requests: Sequence[LimitRequest], *, check_lock: bool, force: bool
    ) -> tuple[list[str], list[str | int | float]]:
        """KEYS and ARGV of `_CONSUME_BATCH`: the whole batch is one script call, so one
        command to encode and one round trip."""
        keys = [self._locks]
        argv: list[str | int | float] = [len(requests)]
        usage = self.prefix + "usage:"
        bucket = self._clock.keys
        flags = (int(check_lock), int(force))
        for r in requests:
            limits = [-1, -1, -1]
            for w in r.windows:
                limits[_INDEX[w.name]] = w.limit
            keys.append(usage + r.account)
            argv += (r.account, r.amount, *flags, int(r.lock), r.reason, *bucket(r.now), *limits)
        return keys, argv

    def _results(self, raw: Sequence[int], requests: Sequence[LimitRequest]) -> list[LimitResult]:
        return [
            self._result(raw[i : i + 5], r.windows)
            for i, r in zip(range(0, len(raw), 5), requests, strict=True)
        ]

    def _run_batch(
        self, requests: Sequence[LimitRequest], *, check_lock: bool, force: bool
    ) -> list[LimitResult]:
        keys, argv = self._batch_args(requests, check_lock=check_lock, force=force)
        return self._results(self._consume(keys=keys, args=argv), requests)

    @staticmethod
    def _result(raw: Sequence[int], windows: Sequence[Window]) -> LimitResult:
        status, exc, hour, day, month = (int(x) for x in raw)
        exceeded = None
        if exc:
            name = WINDOW_NAMES[exc - 1]
            if any(w.name == name for w in windows):
                exceeded = name
        return LimitResult(
            allowed=status == 0,
            locked=status == 3,
            exceeded=exceeded,
            newly_locked=status == 2,
            counts={"hour": hour, "day": day, "month": month},
        )

    def consume_limits(self, requests: Sequence[LimitRequest]) -> list[LimitResult]:
        check_batch(requests)
        if not requests:
            return []
        return self._run_batch(requests, check_lock=True, force=False)

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
        res = self._run_batch([req], check_lock=False, force=force)[0]
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
