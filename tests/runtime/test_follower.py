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


# Rotation cases as data: steps run in a temporary directory against one `FollowedFile` of
# `mail.log`. ("write"|"append", name, text), ("rename", old, new), ("unlink", name),
# ("truncate", name), ("copy", src, dst); ("read", bytes): everything `read_chunk` returns
# (64-byte chunks) until it returns None, exactly; ("save",) keeps the follower's (identity,
# offset); ("reopen", name) closes it and follows `name` from that saved position.
Step = tuple[str, ...] | tuple[str, bytes]

ROTATION_CASES: dict[str, list[Step]] = {
    "waits for a file that does not exist yet": [
        ("read", b""),
        ("write", "mail.log", "one\ntwo\n"),
        ("read", b"one\ntwo\n"),
    ],
    "a partial line waits for its newline": [
        ("write", "mail.log", "one\ntw"),
        ("read", b"one\n"),
        ("append", "mail.log", "o\n"),
        ("read", b"two\n"),
    ],
    "a line longer than the chunk is read whole": [
        ("write", "mail.log", "x" * 1000 + "\ny\n"),
        ("read", b"x" * 1000 + b"\ny\n"),
    ],
    # The old file is finished first; the writer that has not reopened yet still appends to
    # the renamed file, which is read beside the new one.
    "rename rotation finishes the old file, then follows the new": [
        ("write", "mail.log", "a1\na2\n"),
        ("read", b"a1\na2\n"),
        ("append", "mail.log", "a3\n"),  # written before the rotation, not yet read
        ("rename", "mail.log", "mail.log.1"),
        ("write", "mail.log", "b1\n"),
        ("append", "mail.log.1", "a4\n"),
        ("read", b"a3\na4\nb1\n"),
        ("append", "mail.log.1", "a5\n"),
        ("append", "mail.log", "b2\n"),
        ("read", b"a5\nb2\n"),
    ],
    "rotation by delete and create": [
        ("write", "mail.log", "a1\n"),
        ("read", b"a1\n"),
        ("append", "mail.log", "a2\n"),
        ("unlink", "mail.log"),
        ("read", b"a2\n"),
        ("write", "mail.log", "b1\n"),
        ("read", b"b1\n"),
    ],
    "copytruncate restarts at the beginning": [
        ("write", "mail.log", "a1 first line\na2\n"),
        ("read", b"a1 first line\na2\n"),
        ("copy", "mail.log", "mail.log.1"),
        ("truncate", "mail.log"),
        ("append", "mail.log", "b1\n"),
        ("read", b"b1\n"),
    ],
    "copytruncate noticed even when the file regrew past the offset": [
        ("write", "mail.log", "a1\n"),
        ("read", b"a1\n"),
        ("truncate", "mail.log"),
        ("append", "mail.log", "b1 a longer first line\nb2\n"),  # past the old offset already
        ("read", b"b1 a longer first line\nb2\n"),
    ],
    "a saved position of another file is not reused; of the same file, resumed": [
        ("write", "mail.log", "a1\na2\n"),
        ("read", b"a1\na2\n"),
        ("save",),
        ("rename", "mail.log", "old"),
        ("write", "mail.log", "b1\nb2\nb3\n"),
        ("reopen", "mail.log"),
        ("read", b"b1\nb2\nb3\n"),
        ("reopen", "old"),
        ("append", "old", "a3\n"),
        ("read", b"a3\n"),
    ],
}


@pytest.mark.parametrize("steps", list(ROTATION_CASES.values()), ids=list(ROTATION_CASES))
def test_rotation(tmp_path: Path, steps: list[Step]) -> None:
    f = FollowedFile(str(tmp_path / "mail.log"))
    saved: tuple[str, int] | None = None
    try:
        for i, (op, *args) in enumerate(steps):
            paths = [tmp_path / a for a in args if isinstance(a, str)]
            if op == "read":
                assert read_all(f) == args[0], f"step {i}"
            elif op == "write":
                paths[0].write_text(str(args[1]))
            elif op == "append":
                append(paths[0], str(args[1]))
            elif op == "rename":
                os.rename(paths[0], paths[1])
            elif op == "unlink":
                paths[0].unlink()
            elif op == "truncate":
                with paths[0].open("r+") as fh:
                    fh.truncate(0)
            elif op == "copy":
                shutil.copy(paths[0], paths[1])
            elif op == "save":
                saved = (f.identity, f.offset)
            elif op == "reopen":
                f.close()
                f = FollowedFile(str(paths[0]), saved)
            else:
                raise AssertionError(f"unknown step {op!r}")
    finally:
        f.close()


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
