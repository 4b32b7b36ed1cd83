"""`mailcfg unlock` and `mailcfg stats` reach the hosts' agents through their transports, on
every host with an agent unless `--host` says otherwise, and say per host what they did.

The hosts here are local: directories below the inventory standing for each host's "/", holding
the agent config where the agent role installs it and the SQLite state at the inventory's
default path, both under the root. The real `mailcfg-agent` runs as it would over SSH.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.tools.passwd import make_password_hash
from runtime.state.sqlite import SqliteStore
from schemas.agent import DEFAULT_AGENT_CONFIG

HOSTS = ("here", "there")
STATE = "var/lib/mailcfg/agent/state.db"  # the default `policy_state`, below the root


def write_inventory(tmp: Path, roots: dict[str, str], roles: str = "") -> Path:
    inv = tmp / "inventory"
    (inv / "domains").mkdir(parents=True)
    hosts = "".join(
        f"  {name}:\n    address: 127.0.0.1\n    hostname: {name}.example.com\n"
        f'    transport: local\n    root: "{root}"\n{roles}'
        for name, root in roots.items()
    )
    (inv / "mailcfg.yml").write_text(f"schema_version: 1\nhosts:\n{hosts}")
    (inv / "domains" / "example.com.yml").write_text(
        "domain: example.com\naccounts:\n"
        f"  - name: alice\n    password: '{make_password_hash('alice-pw-123')}'\n"
    )
    return inv


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """Two local hosts with relative roots, their agent configs installed under the roots."""
    inv = write_inventory(tmp_path, {h: f"hosts/{h}" for h in HOSTS})
    out = tmp_path / "out"
    assert main(["render", str(inv), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    for host in HOSTS:
        # The agent role renders its config at the path the agent looks at by default.
        rendered = out / host / DEFAULT_AGENT_CONFIG.lstrip("/")
        installed = inv / "hosts" / host / DEFAULT_AGENT_CONFIG.lstrip("/")
        installed.parent.mkdir(parents=True)
        shutil.copy(rendered, installed)
    return inv


def state(inv: Path, host: str) -> SqliteStore:
    return SqliteStore(inv / "hosts" / host / STATE)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def test_unlock_asks_every_host_and_says_what_each_did(
    inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = state(inventory, "here")
    store.lock("alice@example.com", "sending limit exceeded", 0)
    store.close()
    code, out, _ = run(capsys, "unlock", str(inventory), "alice@example.com")
    assert code == 0
    assert out.splitlines() == [
        "recap:",
        "here   changed  unlocked alice@example.com",
        "there  ok       alice@example.com was not locked",
        "ok=1, changed=1, failed=0, unreachable=0",
    ]
    store = state(inventory, "here")
    assert not store.is_locked("alice@example.com")
    store.close()
    # Locked nowhere: nothing was unlocked, which is an error for the one who asked.
    code, out, _ = run(capsys, "unlock", str(inventory), "alice@example.com")
    assert code == 1 and "ok=2, changed=0" in out


def test_unlock_on_one_host(inventory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for host in HOSTS:
        store = state(inventory, host)
        store.lock("alice@example.com", "sending limit exceeded", 0)
        store.close()
    # The older form names the host before the address; --host does the same.
    code, out, _ = run(capsys, "unlock", str(inventory), "here", "alice@example.com")
    assert code == 0 and out.splitlines()[1] == "here  changed  unlocked alice@example.com"
    assert "there" not in out
    code, out, _ = run(capsys, "unlock", str(inventory), "alice@example.com", "--host", "there")
    assert code == 0 and out.startswith("recap:\nthere  changed  unlocked alice@example.com\n")
    code, _, err = run(capsys, "unlock", str(inventory), "alice@example.com", "--host", "nope")
    assert code == 1 and "unknown host(s) nope" in err


def test_stats_gathers_rows_from_every_agent(
    inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for host, sent in zip(HOSTS, (3, 4), strict=True):
        store = state(inventory, host)
        store.add_stats("2026-11-20", "alice@example.com", {"sent": sent, "imap_logins": 2})
        store.close()
    code, out, err = run(capsys, "stats", str(inventory), "--day", "2026-11-20", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["host"], r["account"], r["sent"], r["imap_logins"]) for r in rows] == [
        ("here", "alice@example.com", 3, 2),
        ("there", "alice@example.com", 4, 2),
    ]
    assert "here   ok  1 row(s)\nthere  ok  1 row(s)\n" in err
    html = tmp_path / "report.html"
    code, out, _ = run(capsys, "stats", str(inventory), "--host", "there", "--html", str(html))
    assert code == 0 and "<svg" in html.read_text()
    assert [line.split()[0] for line in out.splitlines()] == ["host", "there"]


def test_stats_of_a_failing_host_leaves_the_others(
    inventory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = state(inventory, "here")
    store.add_stats("2026-11-20", "alice@example.com", {"sent": 1})
    store.close()
    (inventory / "hosts/there" / DEFAULT_AGENT_CONFIG.lstrip("/")).unlink()
    code, out, err = run(capsys, "stats", str(inventory), "--format", "csv")
    assert code == 1
    assert out.splitlines()[1].startswith("here,2026-11-20,alice@example.com,")
    assert "there  failed  `mailcfg-agent stats` failed (exit 2): " in err
    assert "cannot read agent config" in err


def test_a_directory_root_without_agent_config_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path, {"here": str(tmp_path / "empty-root")})
    code, out, _ = run(capsys, "unlock", str(inv), "here", "alice@example.com")
    assert code == 1 and "here  failed  `mailcfg-agent unlock` failed (exit 2): " in out


def test_a_host_without_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = write_inventory(tmp_path, {"here": "hosts/here"}, "    roles: [postfix]\n")
    code, _, err = run(capsys, "unlock", str(inv), "alice@example.com")
    assert code == 1 and "no host of the inventory has the agent role" in err
    code, _, err = run(capsys, "stats", str(inv), "--host", "here")
    assert code == 1 and "here: has no agent role" in err


def test_the_machine_itself_is_no_local_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path, {"here": "/"})
    code, _, err = run(capsys, "unlock", str(inv), "here", "alice@example.com")
    assert code == 1 and "mailcfg.yml:7:11: error: hosts.here.root:" in err
