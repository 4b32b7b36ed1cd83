"""The `mailcfg` command line on a small inventory with local hosts in a temporary directory:
exit codes (--detailed-exitcode 0/2/1), apply twice, drift, errors without tracebacks, render,
releases and rollback, an unreachable host not stopping the others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.cli import main

REPO = Path(__file__).resolve().parents[2]
HASH = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"

MAILCFG_YML = """\
schema_version: 1
hosts:
  mx1:
    address: 127.0.0.1
    hostname: mx1.example.com
    transport: local
    root: hosts/mx1
policy:
  tls:
    cert: CERT
    key: KEY
  postmaster: postmaster@example.com
"""
UNREACHABLE_HOST = """\
  mx9:
    address: 127.0.0.1
    hostname: mx9.example.com
    transport: ssh
    ssh: {port: 21999, connect_timeout: 5, known_hosts: known_hosts}
"""
DOMAIN_YML = f"""\
domain: example.com
accounts:
  - name: alice
    password: "{HASH}"
    quota: 1G
  - name: postmaster
    password: "{HASH}"
"""


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed pair: staged validation (`doveconf`) opens the certificate files."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=mx1.example.com",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_pair: tuple[Path, Path]) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inv/domains").mkdir(parents=True)
    text = MAILCFG_YML.replace("CERT", str(tls_pair[0])).replace("KEY", str(tls_pair[1]))
    (tmp_path / "inv/mailcfg.yml").write_text(text)
    (tmp_path / "inv/domains/example.com.yml").write_text(DOMAIN_YML)
    return tmp_path / "inv"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_plan_apply_plan_exit_codes(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", str(inv), "--detailed-exitcode")
    assert code == 2 and "=== mx1: " in out and "to create" in out
    assert run(capsys, "plan", str(inv))[0] == 0  # changes, but no --detailed-exitcode
    code, out, err = run(capsys, "apply", str(inv))
    assert code == 0, err
    assert "mx1  changed  release " in out and "ok=0, changed=1, failed=0" in out
    assert (inv / "hosts/mx1/etc/postfix/main.cf").exists()
    code, out, _ = run(capsys, "plan", str(inv), "--detailed-exitcode")
    recap = "recap:\nmx1  ok  no changes\nok=1, changed=0, failed=0, unreachable=0\n"
    assert code == 0 and out == "=== mx1: no changes\n" + recap
    code, out, _ = run(capsys, "apply", str(inv))
    assert code == 0 and out == "=== mx1: no changes\n" + recap
    assert len(list((inv / "hosts/mx1/var/lib/mailcfg/releases").iterdir())) == 1


def test_password_hashes_never_printed(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ("plan", str(inv)),
        ("plan", str(inv), "--format", "json"),
        ("plan", str(inv), "--format", "markdown"),
        ("apply", str(inv)),
    ):
        _, out, err = run(capsys, *argv)
        assert "$2b$12$" not in out + err
    (inv / "domains/example.com.yml").write_text(DOMAIN_YML.replace("quota: 1G", "quota: 2G"))
    _, out, _ = run(capsys, "plan", str(inv))
    assert "$2b$12$" not in out


def test_drift_is_shown(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "apply", str(inv))
    main_cf = inv / "hosts/mx1/etc/postfix/main.cf"
    main_cf.write_text(main_cf.read_text() + "hand_edit = yes\n")
    code, out, _ = run(capsys, "plan", str(inv), "--detailed-exitcode")
    assert code == 2
    assert "(1 changed by hand on the host)" in out and "-hand_edit = yes" in out


def test_json_format(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", str(inv), "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["errors"] == [] and doc["plans"][0]["host"] == "mx1"
    assert {c["kind"] for c in doc["plans"][0]["changes"]} == {"create"}


def test_invalid_inventory_diagnostics(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (inv / "domains/example.com.yml").write_text(DOMAIN_YML.replace("quota: 1G", "quota: lots"))
    code, _, err = run(capsys, "plan", str(inv), "--detailed-exitcode")
    assert code == 1
    assert "domains/example.com.yml:5:12: error: accounts[0].quota: " in err


def test_missing_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", str(tmp_path / "nope"))
    assert code == 1 and "nope: no such directory" in err


def test_usage_errors_exit_1_not_2(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "plan")[0] == 1
    code, _, err = run(capsys, "plan", str(inv), "--format", "yaml")
    assert code == 1 and "invalid choice" in err
    code, _, err = run(capsys, "plan", str(inv), "--host", "mx7")
    assert code == 1 and "unknown host(s) mx7" in err
    assert run(capsys, "apply", str(inv), "--forks", "0")[0] == 1


def test_render(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = inv.parent / "out"
    (out_dir / "mx1/stale").mkdir(parents=True)
    (out_dir / "mx1/stale/file").write_text("x")
    code, out, _ = run(capsys, "render", str(inv), "--out", str(out_dir))
    assert code == 0 and out.startswith("mx1: ")
    assert (out_dir / "mx1/etc/postfix/main.cf").is_file()
    assert not (out_dir / "mx1/stale/file").exists()


def test_validate_and_check_alias(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(inv))
    assert code == 0 and out.startswith("ok: 1 host(s), 1 domain(s)")
    assert run(capsys, "check", str(inv))[0] == 0


CAROL = f"""\
  - name: carol
    password: "{HASH}"
"""


def test_releases_and_rollback(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "apply", str(inv))
    (inv / "domains/example.com.yml").write_text(
        DOMAIN_YML.replace("quota: 1G", "quota: 2G") + CAROL
    )
    assert run(capsys, "apply", str(inv))[0] == 0
    code, out, _ = run(capsys, "releases", str(inv), "mx1")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[1].startswith("* ")
    first, second = (line[2:].split()[0] for line in lines)
    # Without a terminal it goes ahead, as apply does; it shows what going back changes first.
    code, out, _ = run(capsys, "rollback", str(inv), "mx1")
    assert code == 0, out
    assert out.startswith(f"mx1: rollback to release {first}\n=== mx1: ")
    assert "--- update /etc/dovecot/users (dovecot; sensitive: passwords masked)" in out
    assert "-carol@example.com:{BLF-CRYPT}********::::::\n" in out and "$2b$12$" not in out
    assert "local host: services are not reloaded" in out
    assert out.splitlines()[-1] == f"mx1: now at release {first} (was {second})"
    code, out, _ = run(capsys, "plan", str(inv), "--detailed-exitcode")
    assert code == 2  # the inventory still wants the newer quota
    code, _, err = run(capsys, "rollback", str(inv), "mx1", "--to", "no-such-release")
    assert code == 1 and "release no-such-release is not stored on this host" in err


def test_rollback_asks_on_a_terminal(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal, rollback asks after showing the diff: "n" leaves the host as it is;
    `--yes` does not ask."""
    run(capsys, "apply", str(inv))
    (inv / "domains/example.com.yml").write_text(DOMAIN_YML + CAROL)
    run(capsys, "apply", str(inv))
    current = (inv / "hosts/mx1/var/lib/mailcfg/current").read_text()

    def rollback(*extra: str, answer: str) -> subprocess.CompletedProcess[str]:
        leader, terminal = os.openpty()
        try:
            os.write(leader, answer.encode())
            return subprocess.run(
                [sys.executable, "-m", "compiler", "rollback", str(inv), "mx1", *extra],
                stdin=terminal,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                timeout=120,
                check=False,
            )
        finally:
            os.close(terminal)
            os.close(leader)

    proc = rollback(answer="n\n")
    assert proc.returncode == 1, proc.stderr
    assert "-carol@example.com" in proc.stdout
    assert "Roll mx1 back to " in proc.stdout and proc.stdout.endswith("not applied\n")
    assert (inv / "hosts/mx1/var/lib/mailcfg/current").read_text() == current
    proc = rollback("--yes", answer="")
    assert proc.returncode == 0, proc.stderr
    assert "Roll mx1 back" not in proc.stdout and "now at release" in proc.stdout
    assert (inv / "hosts/mx1/var/lib/mailcfg/current").read_text() != current


def test_unreachable_host_does_not_stop_others(
    inv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (inv / "mailcfg.yml").read_text()
    (inv / "mailcfg.yml").write_text(text.replace("policy:\n", UNREACHABLE_HOST + "policy:\n", 1))
    code, out, _ = run(capsys, "plan", str(inv), "--detailed-exitcode")
    assert code == 1
    assert "=== mx1: " in out and "=== mx9" not in out
    assert (
        "\nmx9  unreachable  mx9: connect" in out
        and "ok=0, changed=1, failed=0, unreachable=1" in out
    )
    code, out, _ = run(capsys, "apply", str(inv))
    assert code == 1
    assert "mx1  changed" in out and "mx9  unreachable" in out
    assert (inv / "hosts/mx1/etc/postfix/main.cf").exists()


def test_entry_point_and_passwd(inv: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "compiler", "passwd"],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("{BLF-CRYPT}$2b$"), proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "compiler", "passwd"],
        input="short\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr


def test_example_inventory_applies_the_same_from_any_directory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tls_pair: tuple[Path, Path],
) -> None:
    """`mailcfg apply <abs path to a copy of inventory/>` from one directory, then from
    another: both runs use the hosts below the inventory (the second says "no changes"), and
    `plan` from a third directory finds the same state."""
    example = tmp_path / "checkout" / "inventory"
    shutil.copytree(REPO / "inventory", example)
    snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
    if not Path(snakeoil).exists():
        # The example names Debian's snakeoil pair, made when ssl-cert is installed on a real
        # system; a container may lack it, and staged validation (doveconf) opens the files.
        text = (example / "mailcfg.yml").read_text()
        text = text.replace(snakeoil, str(tls_pair[0]))
        text = text.replace("/etc/ssl/private/ssl-cert-snakeoil.key", str(tls_pair[1]))
        (example / "mailcfg.yml").write_text(text)
    for cwd in ("first", "second", "third"):
        (tmp_path / cwd).mkdir()
    monkeypatch.chdir(tmp_path / "first")
    code, out, err = run(capsys, "apply", str(example))
    assert code == 0, out[-2000:] + err
    assert "changed=2, failed=0" in out
    monkeypatch.chdir(tmp_path / "second")
    code, out, _ = run(capsys, "apply", str(example))
    assert code == 0 and "recap:\nmx1  ok  no changes\nmx2  ok  no changes\n" in out
    monkeypatch.chdir(tmp_path / "third")
    assert run(capsys, "plan", str(example), "--detailed-exitcode")[0] == 0
    assert (example / ".mailcfg/hosts/mx1/etc/postfix/main.cf").is_file()
    for cwd in ("first", "second", "third"):
        assert not any((tmp_path / cwd).iterdir()), f"{cwd}: something was written there"


def test_codeowners_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "codeowners", str(REPO / "inventory"))
    assert code == 0 and "/inventory/domains/example.com.yml @alice" in out
    code, out, _ = run(capsys, "schema", "--kind", "domain")
    assert code == 0 and "accounts" in json.loads(out)["properties"]
