"""Gathering statistics from hosts (the real agent command through a LocalTransport) and the
table / JSON / CSV / HTML renderings."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from compiler.connectors.local import LocalTransport
from compiler.tools.stats import (
    COUNTERS,
    StatsError,
    StatsRow,
    format_stats,
    gather_stats,
    parse_agent_stats,
    render_html_report,
    write_html_report,
)
from runtime.state.base import STAT_COUNTERS
from runtime.state.sqlite import SqliteStore


def row(account: str, day: str = "2026-05-01", host: str = "mx1", **counters: int) -> StatsRow:
    return StatsRow(host, day, account, {c: counters.get(c, 0) for c in COUNTERS})


def test_counter_names_match_the_agent() -> None:
    assert COUNTERS == STAT_COUNTERS


def make_host(tmp_path: Path, name: str, rows: dict[str, dict[str, int]]) -> LocalTransport:
    """A host root whose PATH has a `mailcfg-agent` running this checkout's agent command, and
    an agent config + SQLite state holding `rows` for 2026-05-01."""
    root = tmp_path / name
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    agent = bindir / "mailcfg-agent"
    agent.write_text(f'#!/bin/sh\nexec {sys.executable} -m runtime.logs.commands "$@"\n')
    agent.chmod(agent.stat().st_mode | stat.S_IXUSR)
    store = SqliteStore(root / "state.db")
    for account, counters in rows.items():
        store.add_stats("2026-05-01", account, counters)
    store.close()
    config = {
        "host": name,
        "hostname": f"{name}.example.com",
        "listen": "unix:/nonexistent",
        "state": f"sqlite:///{root}/state.db",
        "local_domains": ["example.com"],
        "global_filter_reject_text": "x",
        "whitelist_reject_text": "x",
        "default_limits": {},
        "postmaster": "postmaster@example.com",
    }
    (root / "agent.json").write_text(json.dumps(config))
    return LocalTransport(name, root)


def test_gather_stats_runs_the_agent_on_each_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_host(tmp_path, "mx1", {"alice@example.com": {"sent": 3, "received": 1}})
    b = make_host(tmp_path, "mx2", {"bob@example.com": {"imap_logins": 2}})
    monkeypatch.setenv("PATH", f"{a.root}/bin:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[2]))
    # Commands run in each host's root, so a relative config path is that host's own.
    rows = gather_stats([b, a], agent_config="agent.json")
    assert [(r.host, r.account) for r in rows] == [
        ("mx1", "alice@example.com"),
        ("mx2", "bob@example.com"),
    ]
    assert rows[0].counters["sent"] == 3 and rows[0].counters["received"] == 1
    assert rows[1].counters["imap_logins"] == 2 and rows[1].counters["sent"] == 0
    only = gather_stats([a], account="nobody@example.com", agent_config=str(a.root / "agent.json"))
    assert only == []
    day = gather_stats([a], day="2026-05-01", agent_config=str(a.root / "agent.json"))
    assert len(day) == 1


def test_gather_stats_names_the_failing_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_host(tmp_path, "mx1", {})
    monkeypatch.setenv("PATH", f"{a.root}/bin:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[2]))
    with pytest.raises(StatsError, match=r"^mx1: `mailcfg-agent stats` failed \(exit 2\): .*agent"):
        gather_stats([a], agent_config=str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("{}", "not a list"),
        ('[{"account": "a@b.c"}]', "entry 0 has no day"),
        ('[{"day": "2026-05-01", "account": "a@b.c", "sent": -1}]', "sent is not a count"),
    ],
)
def test_bad_agent_output_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(StatsError, match=message):
        parse_agent_stats("mx1", text)


def test_formats() -> None:
    rows = [row("alice@example.com", sent=3, received=1), row("bob@example.com", imap_logins=2)]
    table = format_stats(rows, "table").splitlines()
    assert table[0].split()[:5] == ["host", "day", "account", "pop3", "imap"]
    assert table[1].split()[:5] == ["mx1", "2026-05-01", "alice@example.com", "0", "0"]
    data = json.loads(format_stats(rows, "json"))
    assert data[0]["sent"] == 3 and data[1]["imap_logins"] == 2 and data[0]["host"] == "mx1"
    lines = format_stats(rows, "csv").splitlines()
    assert lines[0].startswith("host,day,account,pop3_logins")
    assert lines[1].startswith("mx1,2026-05-01,alice@example.com,0,0,3")
    assert format_stats([], "table") == "no statistics\n"
    with pytest.raises(ValueError, match="unknown format"):
        format_stats(rows, "xml")


def test_html_report_is_self_contained_and_escapes(tmp_path: Path) -> None:
    rows = [
        row("alice@example.com", sent=30, received=5, rejected=2),
        row("<script>@example.com", sent=1),
        row("bob@example.com", day="2026-05-02", received=7),
    ]
    page = render_html_report(rows)
    assert "<script>@" not in page and "&lt;script&gt;@example.com" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page
    assert page.count("<svg") == 3  # 2 days (per-account charts) + top senders of 2026-05-01
    assert page.index("2026-05-02") < page.index("2026-05-01")  # newest day first
    out = tmp_path / "report.html"
    write_html_report(rows, out)
    assert out.read_text(encoding="utf-8") == page
