"""`mailcfg apply` when another apply is running on a host, and when the controller is
interrupted (Ctrl-C): the running apply is named by pid and start, and an interrupted
controller says that the apply goes on on the host, which then commits."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.onhost_program import STATE
from tests.unit.test_cli import DOMAIN_YML, REPO, inv, run, tls_pair
from tests.unit.test_onhost import hold_lock

__all__ = ["inv", "tls_pair"]  # fixtures

CAROL = """\
  - name: carol
    password: "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
"""
HOLDER = '{"command": "apply", "pid": 4242, "host": "other", "started": 1700000000}'


def host_root(inv: Path) -> Path:
    return inv / "hosts/mx1"


def test_a_held_lock_is_reported_with_the_running_apply(
    inv: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "apply", str(inv))[0] == 0
    (inv / "domains/example.com.yml").write_text(DOMAIN_YML + CAROL)
    monkeypatch.setenv("MAILCFG_LOCK_WAIT", "0.5")
    holder = hold_lock(host_root(inv), HOLDER)
    try:
        code, out, err = run(capsys, "apply", str(inv))
    finally:
        holder.communicate("")
    assert code == 1
    assert "another apply is running on other (pid 4242 since 2023-11-14 22:13:20Z)" in out + err
    assert not list((host_root(inv) / STATE / "incoming").iterdir())  # no bundle left behind
    assert run(capsys, "apply", str(inv))[0] == 0


def read_until(stream: int, text: str, timeout: float) -> str:
    """What `stream` (a pipe's fd) gives until `text` appears (or the time is up)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            chunk = os.read(stream, 4096)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def test_ctrl_c_says_the_apply_goes_on_and_the_host_commits(
    inv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "apply", str(inv))[0] == 0
    current = host_root(inv) / STATE / "current"
    before = current.read_text()
    (inv / "domains/example.com.yml").write_text(DOMAIN_YML + CAROL)
    incoming = host_root(inv) / STATE / "incoming"
    holder = hold_lock(host_root(inv), HOLDER)  # the apply waits for it: a moment to interrupt
    try:
        cli = subprocess.Popen(
            [sys.executable, "-m", "compiler", "apply", str(inv), "--yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO), "MAILCFG_LOCK_WAIT": "60"},
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        assert cli.stderr is not None
        deadline = time.monotonic() + 60
        while not (incoming.is_dir() and any(incoming.iterdir())):
            assert time.monotonic() < deadline and cli.poll() is None, "the apply never started"
            time.sleep(0.05)
        time.sleep(1)  # the on-host program has opened its bundle and waits for the lock
        os.killpg(cli.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        said = read_until(cli.stderr.fileno(), "to end here", timeout=30)
        assert "interrupted" in said and "may still commit there" in said, said
        assert cli.poll() is None  # it waits for the running apply, which waits for the lock
    finally:
        holder.communicate("")
    assert cli.wait(timeout=120) == 130
    assert "Traceback" not in cli.stderr.read().decode()
    assert current.read_text() != before  # the interrupted apply committed on the host
    code, out, _ = run(capsys, "plan", str(inv), "--detailed-exitcode")
    assert code == 0, out
