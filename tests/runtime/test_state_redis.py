"""Redis backend against a real redis-server: the shared StateStore contract, plus two
"hosts" (separate clients) sharing one account counter without exceeding it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.state.base import Window
from runtime.state.limits import LimitRequest, lock_record
from runtime.state.open import StoreError, open_store
from runtime.state.redis import RedisStore
from tests.runtime.redis_server import redis_server
from tests.runtime.state_contract import T0, StoreContract

REDIS_PORT = 22379


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(REDIS_PORT, tmp_path_factory.mktemp("redis")) as url:
        yield url


class TestRedisContract(StoreContract):
    @pytest.fixture
    def store(self, redis_url: str) -> Iterator[RedisStore]:
        s = RedisStore(redis_url, host="mx1")
        s.r.flushdb()
        yield s
        s.close()


def test_two_hosts_share_one_counter(redis_url: str) -> None:
    a, b = RedisStore(redis_url, host="mx1"), RedisStore(redis_url, host="mx2")
    a.r.flushdb()
    allowed = [0, 0]

    def hammer(i: int, store: RedisStore) -> None:
        for _ in range(20):
            res = store.consume_limits(
                [LimitRequest("x@y.org", 1, [Window("day", 50)], T0, lock=False)] * 5
            )
            allowed[i] += sum(r.allowed for r in res)

    threads = [threading.Thread(target=hammer, args=(i, s)) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 50
    # Log positions are per host even in a shared backend.
    a.set_position("mail.log", "1:2", 5)
    assert b.get_position("mail.log") is None


def test_open_store(redis_url: str, tmp_path: Path) -> None:
    s = open_store(redis_url, host="mx1")
    assert isinstance(s, RedisStore)
    s.close()
    db = open_store(f"sqlite:///{tmp_path}/s.db")
    db.close()
    assert (tmp_path / "s.db").exists()
    with pytest.raises(StoreError, match="expected sqlite"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="no file path"):
        open_store("sqlite://")


def test_odd_account_names_and_reasons_survive_packing(redis_url: str) -> None:
    s = RedisStore(redis_url, host="mx1")
    s.r.flushdb()
    odd = "o d\td=1@x.org"
    reqs = [LimitRequest(odd, 1, [Window("day", 1)], T0, lock=True, reason="over: 1 of 1\tday")]
    res = s.consume_limits(reqs * 3)
    assert [(r.allowed, r.newly_locked, r.locked) for r in res] == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]
    assert res[1].exceeded == "day" and res[1].counts["day"] == 1
    message = "over: 1 of 1\tday: 2 recipients this day, over the per-day limit of 1"
    assert s.locks() == {odd: message} and res[1].lock_reason == message
    # The script packs the record as `lock_record` does (one format for both stores).
    raw = s.r.hget("mailcfg:locks", odd)
    assert raw == lock_record("over: 1 of 1\tday", "day", 1, 2, "recipients").encode()
    s.close()
