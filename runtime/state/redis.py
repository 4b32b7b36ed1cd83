"""Redis state backend (`redis://host:port/db`): one counter per account shared by hosts.

Every check-and-count runs in a Lua script (atomic on the server, so no race between
connections, processes or hosts); a batch of requests is ONE script call that does them in
order, so a batch costs one command and one round trip. The script touches several keys, so
it needs a single Redis server, not a Redis Cluster.
A locked account is refused by the policy service (`consume_limits`), whatever its
`on_exceed`; the log follower's `consume` counts mail already sent and ignores locks.
Keys (prefix `mailcfg:`): `usage:<account>` hash of the current hour/day/month buckets and
counts (expires after ~32 days idle), `locks` hash account → reason (`limits.lock_record`, or
plain text), `once:<key>` (SET NX PX),
`stats:<day>` hash "<account>\\t<counter>" → value plus the `stats:days` set, and
`<host>:positions` hash (log offsets are per host, so they carry the host name).

Bucket numbers come from the caller's clock (`now`): hosts sharing one Redis need NTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from runtime.state.base import StatRow
from runtime.state.limits import (
    WINDOW_INDEX,
    WINDOW_NAMES,
    BatchConsume,
    BucketClock,
    LimitRequest,
    LimitResult,
    check_batch,
    describe_lock,
)
from runtime.state.sqlite import group_stats

# One batch of check-and-count steps, in order, atomically (a script runs alone on the server).
# KEYS[1]: the locks hash; KEYS[1 + i]: usage hash of request i (the account is the key minus
# its first ARGV[1] characters). ARGV[2]: two flags for the batch, check_lock and force ("10").
# ARGV[2 + i]: request i packed in one string, "amount lock_on_exceed hour_key day_key
# month_key hour_limit day_limit month_limit unit reason" (limit -1 = not limited): a few
# arguments per batch instead of a dozen per request keep the client's encoding cheap.
# Returns one string of 5 integers per request: status (0 allowed, 1 exceeded, 2 exceeded and
# newly locked, 3 already locked), index of the exceeded window (1-3, 0 none), hour, day and
# month counts. A lock stores `limits.lock_record(reason, window, limit, count, unit)`.
_CONSUME_BATCH = """
local plen = tonumber(ARGV[1])
local check_lock, force = ARGV[2]:sub(1, 1) == '1', ARGV[2]:sub(2, 2) == '1'
local names = {'hour', 'day', 'month'}
local out = {}
for r = 1, #KEYS - 1 do
  local key = KEYS[1 + r]
  local acct = key:sub(plen + 1)
  local amount, lock, hk, dk, mk, lh, ld, lm, unit, reason = ARGV[2 + r]:match(
    '^(%d+) ([01]) (%d+) (%d+) (%d+) (%-?%d+) (%-?%d+) (%-?%d+) (%S+) (.*)$')
  amount = tonumber(amount)
  if check_lock and redis.call('HEXISTS', KEYS[1], acct) == 1 then
    out[r] = '3 0 0 0 0'
  else
    local bucket, limits = {hk, dk, mk}, {tonumber(lh), tonumber(ld), tonumber(lm)}
    local row = redis.call('HMGET', key, 'hour_k', 'hour_n', 'day_k', 'day_n', 'month_k', 'month_n')
    local counts, exceeded = {}, 0
    for i = 1, 3 do
      local c = 0
      if row[2 * i - 1] == bucket[i] then c = tonumber(row[2 * i]) end
      counts[i] = c
      if exceeded == 0 and limits[i] >= 0 and c + amount > limits[i] then exceeded = i end
    end
    if exceeded == 0 or force then
      for i = 1, 3 do counts[i] = counts[i] + amount end
      redis.call('HSET', key, 'hour_k', hk, 'hour_n', counts[1], 'day_k', dk,
                 'day_n', counts[2], 'month_k', mk, 'month_n', counts[3])
      redis.call('EXPIRE', key, 2764800)
    end
    local status = 0
    if exceeded > 0 then
      status = 1
      if lock == '1' and not force then
        local record = string.format('\\30%s %d %d %s %s', names[exceeded], limits[exceeded],
                                     counts[exceeded] + amount, unit, reason)
        redis.call('HSET', KEYS[1], acct, record)
        status = 2
      end
    end
    out[r] = string.format('%d %d %d %d %d', status, exceeded, counts[1], counts[2], counts[3])
  end
end
return table.concat(out, ' ')
"""


_ONCE = """
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def _text(value: bytes | str) -> str:
    """Replies are bytes (no decode_responses); redis-py types them as bytes | str."""
    return value.decode() if isinstance(value, bytes) else value


class RedisStore(BatchConsume):
    """`StateStore` + `LimitStore` on a Redis server."""

    def __init__(self, url: str, *, host: str = "", prefix: str = "mailcfg:") -> None:
        self.url = url
        self.r: redis.Redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix
        self.host = host or "default"
        self._consume = self.r.register_script(_CONSUME_BATCH)
        self._locks = prefix + "locks"
        self._once = self.r.register_script(_ONCE)
        self._clock = BucketClock()

    def run_batch(
        self, requests: Sequence[LimitRequest], *, check_lock: bool, force: bool
    ) -> list[LimitResult]:
        """The whole batch is one script call: one command to encode and one round trip."""
        usage = self.prefix + "usage:"
        keys = [self._locks]
        argv: list[str | int] = [len(usage), f"{int(check_lock)}{int(force)}"]
        bucket = self._clock.keys
        for r in requests:
            limits = [-1, -1, -1]
            for w in r.windows:
                limits[WINDOW_INDEX[w.name]] = w.limit
            hk, dk, mk = bucket(r.now)
            keys.append(usage + r.account)
            argv.append(
                f"{r.amount} {int(r.lock)} {hk} {dk} {mk} {limits[0]} {limits[1]} {limits[2]} "
                f"{r.unit} {r.reason}"
            )
        nums = [int(x) for x in self._consume(keys=keys, args=argv).split()]
        return [
            self._result(nums[i : i + 5], r)
            for i, r in zip(range(0, len(nums), 5), requests, strict=True)
        ]

    @staticmethod
    def _result(raw: Sequence[int], request: LimitRequest) -> LimitResult:
        status, exc, hour, day, month = raw
        exceeded = None
        if exc:
            name = WINDOW_NAMES[exc - 1]
            if any(w.name == name for w in request.windows):
                exceeded = name
        reason = ""
        if status == 2 and exceeded is not None:
            # The record the script stored: the counts are those before the refused amount.
            reason = describe_lock(request.lock_record(exceeded, (hour, day, month)))
        return LimitResult(
            allowed=status == 0,
            locked=status == 3,
            exceeded=exceeded,
            newly_locked=status == 2,
            counts={"hour": hour, "day": day, "month": month},
            lock_reason=reason,
        )

    def consume_limits(self, requests: Sequence[LimitRequest]) -> list[LimitResult]:
        check_batch(requests)
        if not requests:
            return []
        return self.run_batch(requests, check_lock=True, force=False)

    def lock(self, account: str, reason: str, now: float) -> bool:
        return bool(self.r.hsetnx(self._locks, account, reason))

    def unlock(self, account: str) -> bool:
        return bool(self.r.hdel(self._locks, account))

    def is_locked(self, account: str) -> bool:
        return bool(self.r.hexists(self._locks, account))

    def locks(self) -> Mapping[str, str]:
        raw = self.r.hgetall(self._locks)
        return {_text(k): describe_lock(_text(v)) for k, v in sorted(raw.items())}

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
            days = sorted(_text(d) for d in self.r.smembers(self.prefix + "stats:days"))
        rows: list[tuple[str, str, str, int]] = []
        for d in days:
            raw = self.r.hgetall(self.prefix + "stats:" + d)
            for field, value in raw.items():
                acct, _, name = _text(field).partition("\t")
                if account is None or acct == account:
                    rows.append((d, acct, name, int(value)))
        rows.sort(key=lambda r: (r[0], r[1]))
        return group_stats(rows)

    def get_position(self, name: str) -> tuple[str, int] | None:
        raw = self.r.hget(f"{self.prefix}{self.host}:positions", name)
        if raw is None:
            return None
        identity, _, offset = _text(raw).rpartition("\t")
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
