"""`mailcfg unlock` and `mailcfg stats` reach a host's agent through the host's transport.

The host here is this machine (a local transport whose root is a temp dir, holding the agent
config; its state is in a temp dir too), so the real `mailcfg-agent` runs as it would over SSH.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.tools.passwd import make_password_hash
from runtime.state.sqlite import SqliteStore


def write_inventory(tmp: Path, root: str | None = None) -> Path:
    root = root or str(tmp / "hostroot")
    inv = tmp / "inventory"
    (inv / "domains").mkdir(parents=True)
    (inv / "mailcfg.yml").write_text(
        f"""schema_version: 1
hosts:
  here:
    address: 127.0.0.1
    hostname: mx1.example.com
    transport: local
    root: "{root}"
policy:
  policy_state: "sqlite:///{tmp}/state.db"
  paths:
    agent_config_dir: {tmp}/etc
    agent_state_dir: {tmp}/state
"""
    )
    (inv / "domains" / "example.com.yml").write_text(
        "domain: example.com\naccounts:\n"
        f"  - name: alice\n    password: '{make_password_hash('alice-pw-123')}'\n"
    )
    return inv


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    inv = write_inventory(tmp_path)
    assert main(["render", str(inv), "--out", str(tmp_path / "out"), "--cache",
                 str(tmp_path / "cache")]) == 0  # fmt: skip
    config = str(tmp_path / "etc" / "agent.json").lstrip("/")
    installed = tmp_path / "hostroot" / config
    installed.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "out" / "here" / config, installed)
    return inv


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unlock_lifts_the_lock_on_the_host(
    inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.lock("alice@example.com", "sending limit exceeded", 0)
    store.close()
    code, out, _ = run(capsys, "unlock", str(inventory), "here", "alice@example.com")
    assert code == 0 and "unlocked alice@example.com" in out
    code, _, err = run(capsys, "unlock", str(inventory), "here", "alice@example.com")
    assert code == 1 and "was not locked" in err
    store = SqliteStore(tmp_path / "state.db")
    assert not store.is_locked("alice@example.com")
    store.close()


def test_stats_gathers_rows_from_the_agent(
    inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.add_stats("2026-11-20", "alice@example.com", {"sent": 3, "imap_logins": 2})
    store.close()
    code, out, _ = run(capsys, "stats", str(inventory), "--day", "2026-11-20", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["host"], r["account"], r["sent"], r["imap_logins"]) for r in rows] == [
        ("here", "alice@example.com", 3, 2)
    ]
    html = tmp_path / "report.html"
    code, out, _ = run(capsys, "stats", str(inventory), "--day", "2026-11-20", "--html", str(html))
    assert code == 0 and "alice@example.com" in out and "<svg" in html.read_text()


def test_a_directory_root_without_agent_config_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path, root=str(tmp_path / "empty-root"))
    code, _, err = run(capsys, "unlock", str(inv), "here", "alice@example.com")
    assert code == 1 and "Traceback" not in err


def test_the_machine_itself_is_no_local_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path, root="/")
    code, _, err = run(capsys, "unlock", str(inv), "here", "alice@example.com")
    assert code == 1 and "mailcfg.yml:7:11: error: hosts.here.root:" in err
