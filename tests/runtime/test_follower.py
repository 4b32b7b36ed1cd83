"""The rotating-file follower and the follow pipeline on the real SQLite backend: rotation by
rename and by copytruncate, a file that appears later, partial lines, restart mid-file, no
double counting, inotify wake-ups, and log-driven sending limits."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from runtime.logs.follower import FollowedFile
from runtime.logs.ingest import Follower, follow_logs, ingest_files
from runtime.logs.stats import AccountPolicy
from runtime.state.sqlite import SqliteStore
from schemas.agent import AgentConfig

# Lines are written with today's date: a live follower dates classic lines by the clock.
_NOW = time.time()
TS = time.strftime("%b %e 00:00:01", time.localtime(_NOW))
DAY = time.strftime("%Y-%m-%d", time.localtime(_NOW))


def message(qid: str, sender: str, rcpt: str, status: str = "sent", ts: str = "") -> str:
    """The lines real Postfix 3.7 logs for one authenticated submission (see the fixtures)."""
    ts = ts or TS
    return (
        f"{ts} mx1 postfix/submission/smtpd[20754]: connect from localhost[127.0.0.1]\n"
        f"{ts} mx1 postfix/submission/smtpd[20754]: {qid}: client=localhost[127.0.0.1], "
        f"sasl_method=PLAIN, sasl_username={sender}\n"
        f"{ts} mx1 postfix/cleanup[20779]: {qid}: message-id=<x.{qid}@mx1.example.com>\n"
        f"{ts} mx1 postfix/qmgr[20687]: {qid}: from=<{sender}>, size=507, nrcpt=1 (queue active)\n"
        f"{ts} mx1 postfix/submission/smtpd[20754]: disconnect from localhost[127.0.0.1] ehlo=2 "
        "starttls=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=8\n"
        f"{ts} mx1 postfix/lmtp[20781]: {qid}: to=<{rcpt}>, relay=mx1.example.com"
        "[private/dovecot-lmtp], delay=0.09, delays=0.01/0.01/0.03/0.05, dsn=2.0.0, "
        f"status={status} (250 2.0.0 <{rcpt}> sgQuNzBJAWsuUQAAg+zDdQ Saved)\n"
        f"{ts} mx1 postfix/qmgr[20687]: {qid}: removed\n"
    )


def login(account: str, ts: str = "") -> str:
    ts = ts or TS
    return (
        f"{ts} imap-login: Info: Login: user=<{account}>, method=PLAIN, rip=127.0.0.1, "
        "lip=127.0.0.1, mpid=21343, secured, session=<Cb2hX8Rgnsl/AAAB>\n"
    )


def agent_config(tmp_path: Path, logs: list[Path], per_hour: int = 100) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "host": "mx1",
            "hostname": "mx1.example.com",
            "listen": "unix:/nonexistent",
            "state": f"sqlite:///{tmp_path}/state.db",
            "local_domains": ["example.com"],
            "accounts": {
                "alice@example.com": {"limits": {"per_hour": per_hour}},
                "bob@example.com": {"limits": {"per_hour": per_hour}},
            },
            "global_filter_reject_text": "x",
            "whitelist_reject_text": "x",
            "default_limits": {"per_hour": per_hour},
            "postmaster": "postmaster@example.com",
            "logs": [str(p) for p in logs],
            "postfix_config_dir": "/nonexistent",
            "state_dir": str(tmp_path / "agent"),
        }
    )


def counters(store: SqliteStore) -> dict[tuple[str, str], dict[str, int]]:
    return {(r.day, r.account): {k: v for k, v in r.counters.items() if v} for r in store.stats()}


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def read_all(f: FollowedFile) -> bytes:
    out = b""
    while (chunk := f.read_chunk(64)) is not None:
        out += chunk.data
    return out


# -- FollowedFile -------------------------------------------------------------------------


def test_waits_for_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    f = FollowedFile(str(path))
    assert f.read_chunk() is None
    path.write_text("one\ntwo\n")
    assert read_all(f) == b"one\ntwo\n"
    f.close()


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_text("one\ntw")
    f = FollowedFile(str(path))
    assert read_all(f) == b"one\n"
    append(path, "o\n")
    assert read_all(f) == b"two\n"
    f.close()


def test_a_line_longer_than_the_chunk_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    long_line = "x" * 1000 + "\n"
    path.write_text(long_line + "y\n")
    f = FollowedFile(str(path))
    assert read_all(f) == (long_line + "y\n").encode()
    f.close()


def test_rename_rotation_finishes_the_old_file_then_follows_the_new(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_text("a1\na2\n")
    f = FollowedFile(str(path))
    assert read_all(f) == b"a1\na2\n"
    append(path, "a3\n")  # written before the rotation, not yet read
    os.rename(path, tmp_path / "mail.log.1")
    path.write_text("b1\n")
    # The writer has not reopened yet: it still appends to the renamed file.
    append(tmp_path / "mail.log.1", "a4\n")
    got = read_all(f)
    append(tmp_path / "mail.log.1", "a5\n")
    append(path, "b2\n")
    got += read_all(f)
    assert sorted(got.split()) == [b"a3", b"a4", b"a5", b"b1", b"b2"]
    assert got.index(b"a3") < got.index(b"b1")  # the old file first
    f.close()


def test_rotation_by_delete_and_create(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_text("a1\n")
    f = FollowedFile(str(path))
    assert read_all(f) == b"a1\n"
    append(path, "a2\n")
    path.unlink()
    assert read_all(f) == b"a2\n"
    path.write_text("b1\n")
    assert read_all(f) == b"b1\n"
    f.close()


def test_copytruncate_restarts_at_the_beginning(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_text("a1 first line\na2\n")
    f = FollowedFile(str(path))
    assert read_all(f) == b"a1 first line\na2\n"
    shutil.copy(path, tmp_path / "mail.log.1")
    with path.open("r+") as fh:
        fh.truncate(0)
    append(path, "b1\n")
    assert read_all(f) == b"b1\n"
    f.close()


def test_copytruncate_noticed_even_when_the_file_regrew_past_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_text("a1\n")
    f = FollowedFile(str(path))
    assert read_all(f) == b"a1\n"
    with path.open("r+") as fh:
        fh.truncate(0)
    append(path, "b1 a longer first line\nb2\n")  # bigger than the old offset already
    assert read_all(f) == b"b1 a longer first line\nb2\n"
    f.close()


def test_saved_position_of_another_file_is_not_reused(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_text("a1\na2\n")
    f = FollowedFile(str(path))
    read_all(f)
    saved = (f.identity, f.offset)
    f.close()
    os.rename(path, tmp_path / "old")
    path.write_text("b1\nb2\nb3\n")
    again = FollowedFile(str(path), saved)
    assert read_all(again) == b"b1\nb2\nb3\n"
    again.close()
    # The same file resumes exactly at the saved offset.
    same = FollowedFile(str(tmp_path / "old"), saved)
    append(tmp_path / "old", "a3\n")
    assert read_all(same) == b"a3\n"
    same.close()


# -- follow pipeline (real SQLite) --------------------------------------------------------


def test_restart_mid_file_counts_every_line_once(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    config = agent_config(tmp_path, [log])
    store = SqliteStore(tmp_path / "state.db")
    full = message("AAA1", "alice@example.com", "bob@example.com")
    lines = full.splitlines(keepends=True)
    # Stop after the qmgr line: the delivery comes after the restart and must still be
    # attributed to alice (the tracking state is restored with the position).
    log.write_text("".join(lines[:4]) + login("bob@example.com"))
    follower = Follower.open(config, store)
    assert follower.run_once() == 5
    follower.close()
    append(log, "".join(lines[4:]) + message("AAA2", "bob@example.com", "alice@example.com"))
    follower = Follower.open(config, store)
    assert follower.run_once() == 10
    assert follower.run_once() == 0  # nothing twice
    follower.close()
    follower = Follower.open(config, store)
    assert follower.run_once() == 0
    follower.close()
    got = counters(store)
    reference = SqliteStore(tmp_path / "reference.db")
    ingest_files([log], reference, AccountPolicy(frozenset({"example.com"})), year=int(DAY[:4]))
    assert got == counters(reference)
    assert got[(DAY, "alice@example.com")] == {"sent": 1, "received": 1}
    assert got[(DAY, "bob@example.com")] == {"sent": 1, "received": 1, "imap_logins": 1}
    store.close()
    reference.close()


def test_rotations_while_following_count_exactly(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    config = agent_config(tmp_path, [log])
    store = SqliteStore(tmp_path / "state.db")
    follower = Follower.open(config, store)
    log.write_text(message("B1", "alice@example.com", "x@remote.test"))
    follower.run_once()
    append(log, message("B2", "alice@example.com", "x@remote.test"))
    os.rename(log, tmp_path / "mail.log.1")  # rename rotation with unread lines
    log.write_text(message("B3", "alice@example.com", "x@remote.test"))
    follower.run_once()
    shutil.copy(log, tmp_path / "mail.log.2")  # copytruncate rotation
    with log.open("r+") as fh:
        fh.truncate(0)
    # (Real lines carry a new timestamp: an identical first line of the same length would be
    # indistinguishable from the old file, for any follower.)
    append(log, message("B4", "alice@example.com", "x@remote.test", ts=TS[:7] + "23:59:59"))
    follower.run_once()
    follower.close()
    # A restart after all that reads nothing again.
    follower = Follower.open(config, store)
    assert follower.run_once() == 0
    follower.close()
    assert counters(store)[(DAY, "alice@example.com")] == {"sent": 4}
    store.close()


def test_sendmail_submissions_count_toward_limits_and_lock(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    config = agent_config(tmp_path, [log], per_hour=3)
    store = SqliteStore(tmp_path / "state.db")
    ts = time.strftime("%b %e %H:%M:%S")
    text = ""
    for i in range(2):
        qid = f"C{i}"
        text += (
            f"{ts} mx1 postfix/pickup[3313]: {qid}: uid=33 from=<www-data>\n"
            f"{ts} mx1 postfix/qmgr[20687]: {qid}: from=<alice@example.com>, size=321, "
            "nrcpt=2 (queue active)\n"
        )
    # A retry of C0 (deferred earlier) is not charged again.
    text += (
        f"{ts} mx1 postfix/qmgr[20687]: C0: from=<alice@example.com>, size=321, nrcpt=2 "
        "(queue active)\n"
    )
    log.write_text(text)
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    assert store.is_locked("alice@example.com")
    assert "sendmail" in store.locks()["alice@example.com"]
    # 4 recipients charged: the hour window holds 4 (over its limit of 3).
    result = store.consume("alice@example.com", 0, [], time.time(), force=True)
    assert result.counts["hour"] == 4
    assert not store.is_locked("bob@example.com")
    store.close()


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "poll"])
def test_follow_logs_updates_counters_live(tmp_path: Path, use_inotify: bool) -> None:
    log = tmp_path / "mail.log"  # does not exist yet
    config = agent_config(tmp_path, [log])
    store = SqliteStore(tmp_path / "state.db")

    async def scenario() -> dict[tuple[str, str], dict[str, int]]:
        stop = asyncio.Event()
        task = asyncio.create_task(
            follow_logs(config, store, stop, use_inotify=use_inotify, queue_interval=0)
        )
        await asyncio.sleep(0.05)
        log.write_text(login("alice@example.com"))
        await _until(lambda: counters(store).get((DAY, "alice@example.com")))
        os.rename(log, tmp_path / "mail.log.1")
        log.write_text(login("alice@example.com") + login("bob@example.com"))
        await _until(lambda: (DAY, "bob@example.com") in counters(store))
        stop.set()
        await asyncio.wait_for(task, 10)
        return counters(store)

    got = asyncio.run(scenario())
    assert got[(DAY, "alice@example.com")] == {"imap_logins": 2}
    assert got[(DAY, "bob@example.com")] == {"imap_logins": 1}
    store.close()


async def _until(condition: object, limit: float = 20.0) -> None:
    """Wait for a condition (a bound, not a timing assertion: failing means never)."""
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.02)
