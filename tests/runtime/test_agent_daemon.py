"""`mailcfg-agent serve` as the systemd unit runs it: one process answering policy requests
and following the mail log into the same state."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import wait_for_path
from tests.runtime.policy_fixtures import BASE, inbound

LOGIN = (
    "Nov 21 07:33:14 imap-login: Info: Login: user=<alice@example.com>, method=PLAIN, "
    "rip=127.0.0.2, lip=127.0.0.1, mpid=21343, TLS, session=<Cb2hX8Rgnsl/AAAB>\n"
)


def ask(sock: Path, request: dict[str, str]) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall("".join(f"{k}={v}\n" for k, v in request.items()).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            assert chunk, "policy server closed the connection"
            data += chunk
    return data.decode().strip()


def stats(config: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "runtime", "stats", "--config", str(config), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def test_serve_answers_policy_and_follows_logs(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    sock = tmp_path / "policy.sock"
    config = tmp_path / "agent.json"
    config.write_text(
        json.dumps(
            {
                **BASE,
                "listen": f"unix:{sock}",
                "state": f"sqlite:///{tmp_path}/state.db",
                "state_dir": str(tmp_path),
                "logs": [str(log)],
                "postfix_config_dir": str(tmp_path / "no-postfix"),
            }
        )
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "agent.err", "w"),  # noqa: SIM115
    )
    try:
        if not wait_for_path(sock, time.monotonic() + 10, while_alive=lambda: agent.poll() is None):
            assert agent.poll() is None, (tmp_path / "agent.err").read_text()
        assert ask(sock, inbound("bob@example.com", "spam@bad.org")).startswith("action=REJECT")
        # The log did not exist at start: the follower waits for it, then reads it.
        with log.open("a") as f:
            f.write(LOGIN)
        for _ in range(500):
            rows = [r for r in stats(config) if r["account"] == "alice@example.com"]
            if rows and rows[0]["imap_logins"] == 1:
                break
            time.sleep(0.05)
        assert rows and rows[0]["imap_logins"] == 1 and rows[0]["day"].endswith("-11-21")  # type: ignore[union-attr]
        blocked = [r for r in stats(config) if r["account"] == "bob@example.com"]
        assert blocked[0]["blacklist_blocked"] == 1
        # The apply engine's verify step: the running service answers a harmless question.
        ping = subprocess.run(
            [sys.executable, "-m", "runtime", "ping", "--config", str(config)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ping.returncode == 0 and "action=DUNNO" in ping.stdout, ping.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, (tmp_path / "agent.err").read_text()
    assert not sock.exists()
    assert os.path.exists(tmp_path / "state.db")


def test_ping_fails_clearly_without_a_service(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({**BASE, "listen": f"unix:{tmp_path}/none.sock"}))
    ping = subprocess.run(
        [sys.executable, "-m", "runtime", "ping", "--config", str(config), "--wait", "0.5"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ping.returncode == 1
    assert f"no policy service on unix:{tmp_path}/none.sock" in ping.stderr
    assert "Traceback" not in ping.stderr
