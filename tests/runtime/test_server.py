"""The policy server in-process over a real unix socket with the real SQLite backend."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from runtime.cli import main as agent_main
from runtime.cli import serve_policy
from runtime.policy.connection import run_policy_service
from runtime.policy.engine import Policy
from runtime.policy.service import PolicyService
from runtime.state.limits import LimitResult
from runtime.state.sqlite import SqliteStore
from schemas.agent import DEFAULT_AGENT_CONFIG, AgentConfig
from tests.helpers import wait_for_path
from tests.runtime.policy_fixtures import BASE, encode, inbound, make_config, outbound


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, *reqs: dict[str, str]) -> list[str]:
        self.writer.write(b"".join(encode(r) for r in reqs))
        await self.writer.drain()
        return [await self.reply() for _ in reqs]

    async def reply(self) -> str:
        data = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 10)
        assert data.startswith(b"action=")
        return data[7:-2].decode()

    async def close(self) -> None:
        self.writer.close()


class Harness:
    def __init__(self, tmp: Path, config: AgentConfig) -> None:
        self.sock = str(tmp / "policy.sock")
        self.store = SqliteStore(tmp / "state.db")
        self.alerts: list[tuple[str, LimitResult]] = []
        self.service = PolicyService(
            Policy(config),
            self.store,
            send_alert=lambda cfg, acct, res, now: self.alerts.append((acct, res)),
        )
        self.stop = asyncio.Event()

    async def client(self) -> Client:
        return Client(*await asyncio.open_unix_connection(self.sock))


Test = Callable[[Harness], Coroutine[Any, Any, None]]


def run_with_server(tmp: Path, test: Test, config: AgentConfig | None = None) -> Harness:
    async def main() -> Harness:
        h = Harness(tmp, config or make_config())
        server = asyncio.create_task(run_policy_service(f"unix:{h.sock}", h.service, h.stop))
        while not os.path.exists(h.sock):
            await asyncio.sleep(0.01)
        try:
            await test(h)
        finally:
            h.stop.set()
            await server
        return h

    return asyncio.run(main())


def test_socket_mode_and_cleanup(tmp_path: Path) -> None:
    async def t(h: Harness) -> None:
        assert stat.S_IMODE(os.stat(h.sock).st_mode) == 0o660

    h = run_with_server(tmp_path, t)
    assert not os.path.exists(h.sock)


# An expected action: the exact text, or (what it starts with, what it contains...).
Expected = str | tuple[str, ...]


def matches(action: str, expected: Expected) -> bool:
    if isinstance(expected, str):
        return action == expected
    start, *parts = expected
    return action.startswith(start) and all(p in action for p in parts)


# Asked pipelined on one connection, answered in order.
INBOUND_DECISIONS: list[tuple[dict[str, str], Expected]] = [
    (
        inbound("bob@example.com", "spam@bad.org"),
        ("REJECT 5.7.1 <bob@example.com>: sender is on the recipient",),
    ),
    (inbound("carol@example.com", "friend@ok.org"), "DUNNO"),
    (
        inbound("carol@example.com", "stranger@x.org"),
        "REJECT 5.7.1 <carol@example.com>: Ask carol to add you to her whitelist",
    ),
    (
        inbound("alice@example.com", "Big.CASINO@x.org"),
        "REJECT 5.7.1 Sender rejected by the input filter",
    ),
    (inbound("nobody@elsewhere.org", "x@y.org"), "DUNNO"),
    ({"request": "smtpd_access_policy", "protocol_state": "CONNECT"}, "DUNNO"),
]
# The statistics counters those decisions leave.
INBOUND_STATS = {
    ("bob@example.com", "rejected"): 1,
    ("bob@example.com", "blacklist_blocked"): 1,
    ("carol@example.com", "rejected"): 1,
    ("carol@example.com", "blacklist_blocked"): 0,
    ("alice@example.com", "rejected"): 1,
}


def test_inbound_verdicts_and_stats(tmp_path: Path) -> None:
    async def t(h: Harness) -> None:
        c = await h.client()
        got = await c.ask(*(req for req, _ in INBOUND_DECISIONS))
        assert len(got) == len(INBOUND_DECISIONS)
        for action, (req, expected) in zip(got, INBOUND_DECISIONS, strict=True):
            assert matches(action, expected), (req, action)
        await c.close()

    h = run_with_server(tmp_path, t)
    rows = {r.account: r.counters for r in h.store.stats()}
    assert {key: rows[key[0]][key[1]] for key in INBOUND_STATS} == INBOUND_STATS


# Outbound decisions in order, each on client 0 or 1: (client, requests pipelined, expected
# actions). alice: 3 recipients per hour, lock on exceed; bob: 5 per hour, defer only, no
# lock; carol counts messages: 2 per hour whatever the recipient count.
OUTBOUND_STEPS: list[tuple[int, list[dict[str, str]], list[Expected]]] = [
    (0, [outbound("alice@example.com", 2)], ["DUNNO"]),
    (1, [outbound("alice@example.com", 1)], ["DUNNO"]),
    (
        0,
        [outbound("alice@example.com", 1)],
        [("DEFER 4.7.1 <alice@example.com>: hourly sending limit", "locked")],
    ),
    (1, [outbound("alice@example.com", 1)], [("DEFER 4.7.1", "account locked")]),
    *[(0, [outbound("bob@example.com")], ["DUNNO"]) for _ in range(5)],
    (0, [outbound("bob@example.com")], [("", "try again later")]),
    (
        1,
        [outbound("carol@example.com", 50), outbound("carol@example.com", 50)],
        ["DUNNO", "DUNNO"],
    ),
]


def test_outbound_limit_locks_once_and_persists(tmp_path: Path) -> None:
    async def t(h: Harness) -> None:
        clients = [await h.client(), await h.client()]
        for i, (client, requests, expected) in enumerate(OUTBOUND_STEPS):
            got = await clients[client].ask(*requests)
            assert len(got) == len(expected), f"step {i}"
            assert all(matches(a, e) for a, e in zip(got, expected, strict=True)), (i, got)

    h = run_with_server(tmp_path, t)
    assert [a for a, _ in h.alerts] == ["alice@example.com"]
    assert h.alerts[0][1].exceeded == "hour"
    # The lock names the window, its limit and the count that tripped it; the alert says so too.
    message = (
        "sending limit exceeded by a refused message: "
        "4 recipients this hour, over the per-hour limit of 3"
    )
    assert h.store.locks() == {"alice@example.com": message}
    assert h.alerts[0][1].lock_reason == message
    assert not h.store.is_locked("bob@example.com")
    h.store.close()
    assert SqliteStore(tmp_path / "state.db").is_locked("alice@example.com")


def test_pipelined_answers_stay_in_order_around_dns(tmp_path: Path) -> None:
    # SPF on with a nameserver that never answers: the first request waits for its timeout
    # while the later ones are decided at once; replies must still come back in order.
    cfg = make_config(spam={"spf": True, "nameservers": ["127.0.0.1:22054"], "dns_timeout": 0.2})

    async def t(h: Harness) -> None:
        c = await h.client()
        got = await c.ask(
            inbound("alice@example.com", "a@slow.test", client="192.0.2.1"),
            inbound("bob@example.com", "spam@bad.org"),
            outbound("alice@example.com"),
        )
        assert got[0].startswith("DEFER_IF_PERMIT 4.7.24")
        assert got[1].startswith("REJECT") and got[2] == "DUNNO"

    run_with_server(tmp_path, t, cfg)


@pytest.mark.parametrize(
    "garbage", [b"no equals here\n\n", b"\n", b"x=" + b"y" * 20000], ids=["noeq", "empty", "big"]
)
def test_bad_client_closed_server_keeps_going(
    tmp_path: Path, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def t(h: Harness) -> None:
        good = await h.client()
        bad = await h.client()
        bad.writer.write(garbage)
        assert await asyncio.wait_for(bad.reader.read(), 10) == b""  # closed by the server
        assert await good.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]

    with caplog.at_level(logging.WARNING):
        run_with_server(tmp_path, t)
    assert "closing the connection" in caplog.text


def test_idle_connection_closed(tmp_path: Path) -> None:
    async def t(h: Harness) -> None:
        h.service.idle_timeout = h.service.request_timeout = 0.2
        c = await h.client()
        assert await c.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]
        assert await asyncio.wait_for(c.reader.read(), 10) == b""

    run_with_server(tmp_path, t)


def test_connection_without_a_request_gets_the_short_timeout(tmp_path: Path) -> None:
    async def t(h: Harness) -> None:
        h.service.request_timeout = 0.3  # idle_timeout stays at its 310 s
        silent, partial, served = await h.client(), await h.client(), await h.client()
        partial.writer.write(b"request=smtpd_access_policy\n")
        assert await served.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]
        start = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(silent.reader.read(), 10) == b""
        assert await asyncio.wait_for(partial.reader.read(), 10) == b""
        assert asyncio.get_running_loop().time() - start < 2
        # A client that completed a request keeps its connection (idle_timeout).
        assert await served.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]
        # A later request started but never finished gets the short timeout too.
        served.writer.write(b"request=smtpd_access_policy\n")
        assert await asyncio.wait_for(served.reader.read(), 10) == b""

    run_with_server(tmp_path, t)


class BrokenStore(SqliteStore):
    def consume_limits(self, requests: Any) -> list[LimitResult]:
        raise OSError("disk I/O error")

    def add_stats(self, day: str, account: str, counters: Any) -> None:
        raise OSError("disk I/O error")


def test_backend_failure_answers_fail_safe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def t(h: Harness) -> None:
        h.service.store = BrokenStore(tmp_path / "broken.db")
        c = await h.client()
        got = await c.ask(outbound("alice@example.com"), inbound("bob@example.com", "x@evil.net"))
        assert got[0] == "DEFER 4.3.5 sending limit temporarily unavailable; try again later"
        assert got[1].startswith("REJECT")  # the verdict stands; only its counters are lost
        assert await c.ask(outbound("alice@example.com")) == [got[0]]  # still serving

    with caplog.at_level(logging.ERROR):
        run_with_server(tmp_path, t)
    assert "state backend failed" in caplog.text


def _write_config(path: Path, **overrides: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**BASE, **overrides}))
    os.rename(tmp, path)  # how the compiler installs it


def test_reload_on_rename_keeps_connections_and_ignores_bad_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg_path = tmp_path / "agent.json"
    _write_config(cfg_path)
    sock = tmp_path / "p.sock"

    async def main() -> None:
        store = SqliteStore(tmp_path / "state.db")
        stop = asyncio.Event()
        task = asyncio.create_task(serve_policy(str(cfg_path), f"unix:{sock}", store, stop))
        await asyncio.to_thread(wait_for_path, sock, time.monotonic() + 10)
        c = Client(*await asyncio.open_unix_connection(str(sock)))
        assert await c.ask(inbound("alice@example.com", "x@newspam.org")) == ["DUNNO"]
        _write_config(cfg_path, global_filter=["newspam"])
        for _ in range(200):
            if (await c.ask(inbound("alice@example.com", "x@newspam.org")))[0] != "DUNNO":
                break
            await asyncio.sleep(0.02)
        assert (await c.ask(inbound("alice@example.com", "x@newspam.org")))[0].startswith("REJECT")
        (cfg_path.with_suffix(".tmp")).write_text('{"host": 1}')
        os.rename(cfg_path.with_suffix(".tmp"), cfg_path)
        await asyncio.sleep(0.3)
        # Same connection, old (good) config still in force.
        assert (await c.ask(inbound("alice@example.com", "x@newspam.org")))[0].startswith("REJECT")
        stop.set()
        await task
        store.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "keeping the current config" in caplog.text and "agent.json" in caplog.text


def test_cli_unlock_and_locks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "agent.json"
    _write_config(cfg_path, state=f"sqlite:///{tmp_path}/state.db")
    store = SqliteStore(tmp_path / "state.db")
    store.lock("alice@example.com", "sending limit exceeded", 0)
    store.close()
    assert agent_main(["locks", "--config", str(cfg_path)]) == 0
    assert "alice@example.com\tsending limit exceeded" in capsys.readouterr().out
    assert agent_main(["unlock", "Alice@example.com", "--config", str(cfg_path)]) == 0
    assert agent_main(["unlock", "alice@example.com", "--config", str(cfg_path)]) == 1
    assert agent_main(["locks", "--config", str(cfg_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "unlocked alice@example.com\n"
    assert captured.err.endswith("no locked accounts\n")


def test_cli_finds_the_installed_config_without_an_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`unlock` and `locks` read the config where the agent role installs it."""
    assert DEFAULT_AGENT_CONFIG == "/etc/mailcfg/agent.json"
    if Path(DEFAULT_AGENT_CONFIG).exists():
        pytest.skip("this machine has an installed agent config")
    assert agent_main(["locks"]) == 2
    assert f"{DEFAULT_AGENT_CONFIG}: cannot read agent config" in capsys.readouterr().err
    assert agent_main(["unlock", "alice@example.com"]) == 2
    assert f"{DEFAULT_AGENT_CONFIG}: cannot read agent config" in capsys.readouterr().err


def test_cli_bad_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "agent.json"
    bad.write_text('{"host": "mx1"}')
    assert agent_main(["locks", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "invalid agent config" in err and "hostname" in err and "Traceback" not in err
    assert agent_main(["locks", "--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read agent config" in capsys.readouterr().err


def test_bad_utf8_account_is_isolated_from_its_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The real SQLite store refuses a surrogate-escaped account name (bad UTF-8 from the
    # wire): the batch is decided again one by one, only that request gets the fail-safe.
    async def t(h: Harness) -> None:
        c1, c2 = await h.client(), await h.client()
        bad = encode(outbound("alice@example.com")).replace(b"username=", b"username=\xff")
        c1.writer.write(encode(outbound("bob@example.com")) + bad)
        c2.writer.write(encode(outbound("alice@example.com")))
        got = [await c1.reply(), await c1.reply(), await c2.reply()]
        assert got[0] == "DUNNO" and got[2] == "DUNNO"
        assert got[1] == "DEFER 4.3.5 sending limit temporarily unavailable; try again later"
        # bob's request was counted despite its neighbour: 5 per hour, so 4 more fit.
        for _ in range(4):
            assert await c2.ask(outbound("bob@example.com")) == ["DUNNO"]
        assert "try again later" in (await c2.ask(outbound("bob@example.com")))[0]

    with caplog.at_level(logging.WARNING):
        run_with_server(tmp_path, t)
    assert "deciding one by one" in caplog.text


def test_connection_cap_evicts_the_longest_idle(tmp_path: Path) -> None:
    async def t(h: Harness) -> None:
        h.service.connections.limit = 4
        served = await h.client()
        assert await served.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]
        idle = [await h.client() for _ in range(3)]
        await asyncio.sleep(0.05)
        assert len(h.service.connections) == 4
        assert await served.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]
        # Full: each newcomer evicts the connection idle the longest (the silent ones, in
        # the order they came; `served` was active since).
        newcomers = []
        for i in range(3):
            newcomers.append(newcomer := await h.client())
            assert await newcomer.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]
            assert await asyncio.wait_for(idle[i].reader.read(), 10) == b""
        # Now `served` is the one idle the longest.
        late = await h.client()
        assert await late.ask(inbound("carol@example.com", "friend@ok.org")) == ["DUNNO"]
        assert await asyncio.wait_for(served.reader.read(), 10) == b""
        assert len(h.service.connections) == 4 and h.service.connections.evicted == 4

    run_with_server(tmp_path, t)
