"""The policy server on the Redis backend: one script call per batch keeps the counts exact
across connections (against a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.state.redis import RedisStore
from tests.runtime.policy_fixtures import make_config, outbound
from tests.runtime.redis_server import redis_server
from tests.runtime.test_server import Harness, run_with_server

REDIS_PORT = 22541


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(REDIS_PORT, tmp_path_factory.mktemp("redis")) as url:
        yield url


def test_redis_counts_exact_across_connections(tmp_path: Path, redis_url: str) -> None:
    config = make_config(default_limits={"per_hour": 100, "on_exceed": "lock"})

    async def t(h: Harness) -> None:
        store = RedisStore(redis_url, host="mx1")
        store.r.flushdb()
        h.service.store = store
        clients = [await h.client() for _ in range(8)]

        async def send(i: int) -> list[str]:
            out = []
            for n in range(20):  # one request at a time, as smtpd does
                out += await clients[i].ask(outbound("zed@example.com", instance=f"{i}.{n}"))
            return out

        replies = [r for rs in await asyncio.gather(*(send(i) for i in range(8))) for r in rs]
        assert len(replies) == 160
        assert replies.count("DUNNO") == 100
        refused = [r for r in replies if r != "DUNNO"]
        assert sum("account locked, contact" in r for r in refused) == 1  # newly locked
        assert all(r.startswith("DEFER 4.7.1 <zed@example.com>:") for r in refused)
        assert store.locks() == {
            "zed@example.com": "sending limit exceeded by a refused message: "
            "101 recipients this hour, over the per-hour limit of 100"
        }

    h = run_with_server(tmp_path, t, config)
    assert [acct for acct, _ in h.alerts] == ["zed@example.com"]  # exactly one alert
    assert isinstance(h.service.store, RedisStore)
    h.service.store.close()
