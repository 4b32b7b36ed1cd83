"""The agent's lifecycle (runtime.daemon): sd_notify over a real datagram socket, the watchdog
stopping when the event loop stalls, supervised helpers restarted after real failures (EMFILE
in the log follower), and reload refusing what start refuses."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from runtime.cli import main as agent_main
from runtime.cli import serve_policy
from runtime.daemon import Daemon, Notifier, connection_cap, supervise, watchdog_interval
from runtime.state.sqlite import SqliteStore
from tests.helpers import wait_for_path
from tests.runtime.policy_fixtures import BASE, encode, inbound, make_config


class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for systemd; records (time, message)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        return [m for _, m in self.got]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def test_notifier_sends_to_a_path_and_to_the_abstract_namespace(tmp_path: Path) -> None:
    for env_value, bind in (
        (str(tmp_path / "notify"), str(tmp_path / "notify")),
        (f"@mailcfg-test-{os.getpid()}", f"\0mailcfg-test-{os.getpid()}"),
    ):
        listener = NotifyListener(bind)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": env_value})
        assert notifier.send("READY=1", "STATUS=answering")
        time.sleep(0.2)
        notifier.close()
        listener.close()
        assert listener.messages() == ["READY=1\nSTATUS=answering"]


def test_notifier_outside_systemd_and_when_nobody_listens(tmp_path: Path) -> None:
    assert not Notifier.from_environ({}).send("READY=1")
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative"}).send("READY=1")
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not gone.send("WATCHDOG=1")  # logged, never raised


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": me}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval({}) is None


def test_connection_cap_leaves_a_reserve() -> None:
    assert connection_cap(1024) == 768
    assert connection_cap(128) == 64
    assert connection_cap(50) == 16
    assert 0 < connection_cap() < 1 << 20


def test_watchdog_pings_stop_while_the_loop_is_stalled(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "notify"))
    daemon = Daemon(Notifier(str(tmp_path / "notify")), watchdog=0.02)

    async def main() -> None:
        daemon.ready()
        await asyncio.sleep(0.2)
        time.sleep(0.6)  # a stalled loop: a blocking call, a pathological check...
        await asyncio.sleep(0.2)
        daemon.stop.set()

    asyncio.run(daemon.run(main()))
    time.sleep(0.1)
    listener.close()
    msgs = listener.messages()
    assert "READY=1" in msgs and "WATCHDOG=1" in msgs and msgs[-1] == "STOPPING=1"
    pings = [t for t, m in listener.got if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) > 10
    assert max(gaps) >= 0.55  # nothing was sent while the loop stood still
    assert sorted(gaps)[-2] < 0.3  # and it pinged steadily before and after


def test_supervise_restarts_a_failing_helper_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[float] = []

    async def helper(stop: asyncio.Event) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise OSError(24, "Too many open files")
        await stop.wait()

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(supervise("helper", lambda: helper(stop), stop, first=0.05))
        while len(attempts) < 4:
            await asyncio.sleep(0.01)
        stop.set()
        await task

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # doubling
    assert caplog.text.count("helper failed; restarting it") == 3
    assert "Too many open files" in caplog.text


# A real EMFILE in the real follower: the open-file limit is lowered and filled, so the first
# attempts to open the log fail; once descriptors are free again it follows the log.
_EMFILE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys, time
    from runtime.config import load_agent_config
    from runtime.daemon import supervise
    from runtime.logs.ingest import follow_logs
    from runtime.state.sqlite import SqliteStore

    config = load_agent_config(sys.argv[1])
    store = SqliteStore(config.state[len("sqlite://"):])

    async def main():
        stop = asyncio.Event()
        # Fill every descriptor up to a lowered limit.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == 24, exc
        task = asyncio.create_task(
            supervise("log follower", lambda: follow_logs(config, store, stop), stop, first=0.1)
        )
        await asyncio.sleep(0.5)  # a few failed attempts
        for fd in hog:
            os.close(fd)
        for _ in range(200):
            rows = [r for r in store.stats() if r.account == "alice@example.com"]
            if rows and rows[0].counters.get("imap_logins") == 1:
                print("FOLLOWED")
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(main())
    """
)

LOGIN = (
    "Nov 21 07:33:14 imap-login: Info: Login: user=<alice@example.com>, method=PLAIN, "
    "rip=127.0.0.2, lip=127.0.0.1, mpid=21343, TLS, session=<Cb2hX8Rgnsl/AAAB>\n"
)


def test_follower_recovers_from_emfile(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(LOGIN)
    config = tmp_path / "agent.json"
    config.write_text(
        json.dumps(
            {
                **BASE,
                "state": f"sqlite:///{tmp_path}/state.db",
                "state_dir": str(tmp_path),
                "logs": [str(log)],
                "postfix_config_dir": str(tmp_path / "no-postfix"),
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-c", _EMFILE_SCRIPT, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FOLLOWED" in proc.stdout, proc.stderr
    assert "log follower failed; restarting it" in proc.stderr
    assert "Too many open files" in proc.stderr


def _config(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "agent.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**BASE, **overrides}))
    os.rename(tmp, path)
    return path


def test_serve_keeps_answering_while_the_follower_fails(tmp_path: Path) -> None:
    # The follower can't even start (its state directory is a file): logged and retried,
    # the policy service answers all along.
    sock = tmp_path / "p.sock"
    (tmp_path / "file").write_text("")
    config = _config(
        tmp_path,
        listen=f"unix:{sock}",
        state=f"sqlite:///{tmp_path}/state.db",
        state_dir=str(tmp_path / "file" / "state"),
        logs=[str(tmp_path / "mail.log")],
    )
    err = tmp_path / "agent.err"
    with err.open("w") as stderr:
        agent = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 20
        while "log follower failed" not in err.read_text() or not sock.exists():
            assert agent.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(encode(inbound("bob@example.com", "spam@bad.org")))
            assert s.recv(4096).startswith(b"action=REJECT")
    finally:
        agent.terminate()
        assert agent.wait(timeout=30) == 0, err.read_text()
    assert "Traceback" in err.read_text()  # the follower's failure is logged in full


def test_start_and_reload_refuse_the_same_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # The agent can't bind "tcp:nohost": the schema (which `mailcfg validate` shares) refuses
    # it, and so do the agent's start and its reload.
    bad: dict[str, Any] = {"listen": "tcp:nohost"}
    with pytest.raises(ValidationError, match="not a listen address"):
        make_config(**bad)
    config = _config(tmp_path, **bad, state=f"sqlite:///{tmp_path}/state.db")
    assert agent_main(["serve", "--config", str(config)]) == 2
    assert "'tcp:nohost' is not a listen address" in capsys.readouterr().err

    sock = tmp_path / "p.sock"
    config = _config(tmp_path, listen=f"unix:{sock}")

    async def main() -> None:
        store = SqliteStore(tmp_path / "state.db")
        stop = asyncio.Event()
        task = asyncio.create_task(serve_policy(str(config), None, store, stop))
        await asyncio.to_thread(wait_for_path, sock, time.monotonic() + 10)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        _config(tmp_path, global_filter=["newspam"], **bad)
        await asyncio.sleep(0.5)
        writer.write(encode(inbound("alice@example.com", "x@newspam.org")))
        # The refused config's filter is not in force: the old config still is.
        assert await reader.readuntil(b"\n\n") == b"action=DUNNO\n\n"
        writer.close()
        stop.set()
        await task
        store.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "keeping the current config" in caplog.text
    assert "'tcp:nohost' is not a listen address" in caplog.text
