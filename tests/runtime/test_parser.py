"""The log parser against annotated real log lines, plus the day/year rules and robustness."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.logs.ingest import ingest_files
from runtime.logs.parser import UNKNOWN, DayResolver, LineParser, event_fields
from runtime.logs.stats import LOG_COUNTERS, AccountPolicy, Tally
from runtime.state.sqlite import SqliteStore

FIXTURES = Path(__file__).parent / "fixtures" / "logs"


def load_fixture(path: Path) -> tuple[int, list[tuple[str, str, int]]]:
    """(year, [(expect, line, line number)]) of an annotated log file."""
    year = 2026
    cases: list[tuple[str, str, int]] = []
    expect: str | None = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("# year: "):
            year = int(line[8:])
        elif line.startswith("# expect: "):
            expect = line[10:]
        elif line.startswith("#"):
            continue
        else:
            assert expect is not None, f"{path.name}:{n}: line without an annotation"
            cases.append((expect, line, n))
            expect = None
    return year, cases


FIXTURE_FILES = sorted(FIXTURES.glob("*.log"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_annotated_lines(path: Path) -> None:
    year, cases = load_fixture(path)
    assert cases
    parser = LineParser(DayResolver(year=year))
    for expect, line, n in cases:
        event = parser.parse_line(line)
        if expect == "none":
            got = "none" if event is None else event_fields(event)
            assert got == "none", f"{path.name}:{n}"
        elif expect == "unknown":
            assert event == UNKNOWN, f"{path.name}:{n}"
        else:
            assert event is not None, f"{path.name}:{n}: no event"
            assert event_fields(event) == json.loads(expect), f"{path.name}:{n}"


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_whole_text_equals_line_by_line(path: Path) -> None:
    """Parsing a file at once (the follower's way) gives the line-by-line events, and the
    fused counting path gives the same counters as counting those events."""
    year, cases = load_fixture(path)
    text = "".join(line + "\n" for _, line, _ in cases)
    one = LineParser(DayResolver(year))
    by_line = [
        e for e in (one.parse_line(line) for _, line, _ in cases) if e is not None and e != UNKNOWN
    ]
    whole = LineParser(DayResolver(year)).parse_text(text)
    assert sorted(whole) == sorted(by_line)
    policy = AccountPolicy(frozenset({"example.com"}))
    slow, fast = Tally(policy), Tally(policy)
    slow.add_events(whole)
    fast.add_text(text, LineParser(DayResolver(year)))
    assert fast.counts == slow.counts
    assert fast.senders == slow.senders


def _bench_generator() -> Any:
    path = Path(__file__).parents[2] / "bench" / "logparse" / "generate.py"
    spec = importlib.util.spec_from_file_location("logparse_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", ["rfc3339", "classic"])
def test_generated_log_fast_path_equals_events(fmt: str) -> None:
    gen = _bench_generator()
    shape = gen.Shape(lines=20_000, accounts=200, domains=10, days=2, fmt=fmt, seed=3)
    parts: list[str] = []
    gen.generate(shape, parts.append)
    text = "".join(parts)
    host = gen.Host(shape)
    policy = AccountPolicy(frozenset(host.domains), frozenset(host.accounts))
    slow, fast = Tally(policy), Tally(policy)
    slow.add_events(LineParser(DayResolver(2024)).parse_text(text))
    fast.add_text(text, LineParser(DayResolver(2024)))
    assert fast.counts == slow.counts
    assert sum(fast.counts.values()) > 1000


@pytest.mark.parametrize("fmt", ["rfc3339", "classic"])
def test_ingest_counts_equal_the_generators_reference(fmt: str, tmp_path: Path) -> None:
    """Every counter of a generated multi-day log, ingested in 64 KiB reads, equals the count
    the generator kept from what each line means (not from parsing it)."""
    gen = _bench_generator()
    shape = gen.Shape(lines=150_000, accounts=600, domains=30, days=3, fmt=fmt, seed=11)
    log = tmp_path / "mail.log"
    with log.open("w") as f:
        expect = gen.generate(shape, f.write)
    host = gen.Host(shape)
    policy = AccountPolicy(frozenset(host.domains), frozenset(host.accounts))
    store = SqliteStore(tmp_path / "state.db")
    result = ingest_files([log], store, policy, year=2024, read_bytes=1 << 16)
    assert result.lines == shape.lines and result.unknown == 0
    got = {
        (row.day, row.account): {k: v for k, v in row.counters.items() if v}
        for row in store.stats()
    }
    store.close()
    assert {k: v for k, v in got.items() if v} == expect
    kinds = {name for row in expect.values() for name in row}
    assert kinds >= {
        "sent", "bounced", "deferred", "received", "rejected", "imap_logins", "pop3_logins",
        "login_failures", "lost_connections",
    }  # fmt: skip
    assert len({day for day, _ in expect}) == shape.days


def test_year_rollover_and_live_year() -> None:
    days = DayResolver(year=2023)
    assert days.day_of("Dec 31 23:59:59 h x: y") == "2023-12-31"
    assert days.day_of("Jan  1 00:00:00 h x: y") == "2024-01-01"
    assert days.day_of("Dec 31 23:59:59 h x: late") == "2023-12-31"  # a late line
    assert days.day_of("Jan  2 00:00:00 h x: y") == "2024-01-02"
    # A live log read on 2024-01-05 that starts with December's lines: last year.
    live = DayResolver(now=1704412800.0)  # 2024-01-05 UTC
    assert live.day_of("Dec 30 10:00:00 h x: y") == "2023-12-30"
    assert live.day_of("Jan  5 10:00:00 h x: y") == "2024-01-05"
    # Dovecot's log_path pads the day with a zero, syslog with a space.
    assert DayResolver(2024).day_of("May 01 12:00:00 imap-login: x") == "2024-05-01"
    assert DayResolver(2024).day_of("2024-05-01T23:59:59.9-07:00 h x: y") == "2024-05-01"
    assert DayResolver(2024).day_of("May 32 12:00:00 h x: y") is None
    assert DayResolver(2024).day_of("") is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    parser = LineParser(DayResolver(2024))
    parser.parse_text(text + "\n")
    parser.parse_line(text.replace("\n", " "))
    Tally(AccountPolicy(frozenset({"example.com"}))).add_text(text + "\n", parser)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            "May  1 12:00:00 mx postfix/qmgr[1]: ABC: from=<{}>, size=1, nrcpt=2 (queue active)",
            "May  1 12:00:00 mx postfix/smtp[1]: ABC: to=<{}>, relay=x, dsn=2.0.0, "
            "status=sent (ok)",
            "May  1 12:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[1.2.3.4]: 554 x; "
            "from=<{}> to=<a@b.c> proto=ESMTP helo=<{}>",
            "May 01 12:00:00 imap-login: Info: Login: user=<{}>, method=PLAIN",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=60),
)
def test_hostile_fields_never_crash(template: str, field: str) -> None:
    line = template.replace("{}", field)
    parser = LineParser(DayResolver(2024))
    parser.parse_line(line)
    Tally(AccountPolicy(frozenset({"example.com"}))).add_text(line + "\n", parser)


def test_tally_state_grows_with_accounts_and_days_not_lines() -> None:
    """Three times the lines of the same host and days: the counters stay one row per
    account-day and the tracking state (queue ids, sessions) stays the mail in flight."""
    gen = _bench_generator()
    for lines in (30_000, 90_000):
        shape = gen.Shape(lines=lines, accounts=150, domains=5, days=2, seed=5)
        parts: list[str] = []
        gen.generate(shape, parts.append)
        host = gen.Host(shape)
        tally = Tally(AccountPolicy(frozenset(host.domains), frozenset(host.accounts)))
        parser = LineParser(DayResolver(2024))
        text = "".join(parts)
        pos = 0
        while pos < len(text):  # 64 KiB chunks of whole lines, as the follower reads
            end = text.find("\n", pos + (1 << 16)) + 1 or len(text)
            tally.add_text(text[pos:end], parser)
            pos = end
        rows = sum(len(r) for r in tally.by_day.values())
        assert rows <= shape.accounts * shape.days
        assert all(
            len(row) == len(LOG_COUNTERS) for r in tally.by_day.values() for row in r.values()
        )
        tracked = len(tally.senders) + len(tally.sessions) + len(tally.picked_up)
        assert tracked < 100  # messages and sessions still open at the end of the log


def test_message_text_cannot_add_events() -> None:
    """Each line of the hostile fixture gives at most its one annotated event, whole-text and
    counting paths alike: a match after the program tag (a remote reply, a sender address, a
    SASL user name) is not an event."""
    path = FIXTURES / "hostile-message-text.log"
    year, cases = load_fixture(path)
    for expect, line, n in cases:
        events = LineParser(DayResolver(year)).parse_text(line + "\n")
        assert len(events) == (expect != "none"), f"{path.name}:{n}: {events}"
    tally = Tally(AccountPolicy(frozenset({"example.com"})))
    tally.add_text("".join(line + "\n" for _, line, _ in cases), LineParser(DayResolver(year)))
    rows = {account: row for (_, account), row in tally.take_rows().items()}
    assert set(rows) == {"alice@example.com", "bob@example.com"}, rows
    assert {k: v for k, v in rows["alice@example.com"].items() if v} == {"imap_logins": 1}
    assert not tally.take_charges()
