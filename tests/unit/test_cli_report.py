"""What `mailcfg plan` and `apply` report: one recap format for both, `plan --format json` as
one JSON document on stdout whatever goes wrong (an invalid inventory, bad arguments, an
unknown or unreachable host, a host that does not render) with the exit code unchanged, the
activations worded as apply carries them out, and the README's exit-code table, each code of
which some test produces."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from compiler.cli import main
from tests.unit.test_cli import CAROL, DOMAIN_YML, MAILCFG_YML, UNREACHABLE_HOST

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed pair: staged validation (`doveconf`) opens the certificate files."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=mx1.example.com", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_files: tuple[Path, Path]) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILCFG_SERVICES", raising=False)
    (tmp_path / "inv/domains").mkdir(parents=True)
    text = MAILCFG_YML.replace("CERT", str(tls_files[0])).replace("KEY", str(tls_files[1]))
    (tmp_path / "inv/mailcfg.yml").write_text(text)
    (tmp_path / "inv/domains/example.com.yml").write_text(DOMAIN_YML)
    return tmp_path / "inv"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code, out, _ = run(capsys, "plan", *argv, "--format", "json")
    return code, json.loads(out)  # the whole of stdout is one document


def with_unreachable_host(inv: Path) -> None:
    text = (inv / "mailcfg.yml").read_text()
    (inv / "mailcfg.yml").write_text(text.replace("policy:\n", UNREACHABLE_HOST + "policy:\n", 1))


def broken_roles(inv: Path) -> Path:
    """A copy of the roles whose postfix main.cf template names an undefined variable."""
    roles = inv.parent / "roles"
    shutil.copytree(REPO / "roles", roles)
    template = roles / "postfix/templates/main.cf.j2"
    template.write_text(template.read_text() + "{{ no_such_variable }}\n")
    return roles


# --- plan --format json: always one document ----------------------------------------------------


def test_json_for_an_invalid_inventory(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (inv / "domains/example.com.yml").write_text(DOMAIN_YML.replace("quota: 1G", "quota: lots"))
    code, doc = plan_json(capsys, str(inv), "--detailed-exitcode")
    assert code == 1 and doc["plans"] == []
    (error,) = doc["errors"]  # type: ignore[misc]
    assert error["host"] is None and error["outcome"] == "invalid"
    (found,) = [d for d in error["diagnostics"] if d["severity"] == "error"]
    assert found["file"].endswith("domains/example.com.yml") and found["line"] == 5
    assert found["field"] == "accounts[0].quota"
    # The same error without JSON: located lines on stderr, nothing on stdout.
    code, out, err = run(capsys, "plan", str(inv))
    assert code == 1 and out == "" and "example.com.yml:5:12: error: accounts[0].quota" in err
    assert run(capsys, "validate", str(inv))[0] == 1


def test_json_for_an_unreachable_host(inv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_unreachable_host(inv)
    code, doc = plan_json(capsys, str(inv), "--detailed-exitcode")
    assert code == 1
    assert [p["host"] for p in doc["plans"]] == ["mx1"]  # type: ignore[index]
    (error,) = doc["errors"]  # type: ignore[misc]
    assert error["host"] == "mx9" and error["outcome"] == "unreachable"
    assert "connect" in error["message"]
    assert doc["recap"] == {
        "hosts": [
            {"host": "mx1", "outcome": "changed", "detail": error_free_detail(doc)},
            {"host": "mx9", "outcome": "unreachable", "detail": error["message"]},
        ],
        "counts": {"ok": 0, "changed": 1, "failed": 0, "unreachable": 1},
    }


def error_free_detail(doc: dict[str, object]) -> str:
    changes = doc["plans"][0]["changes"]  # type: ignore[index]
    return f"{len(changes)} to create, 0 to update, 0 to delete"


def test_json_for_a_host_that_does_not_render(
    inv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roles = broken_roles(inv)
    code, doc = plan_json(capsys, str(inv), "--roles", str(roles))
    assert code == 1 and doc["plans"] == []
    (error,) = doc["errors"]  # type: ignore[misc]
    assert error["host"] == "mx1" and error["outcome"] == "failed"
    assert "no_such_variable" in error["message"]
    # validate and render fail alike; render then writes nothing.
    code, _, err = run(capsys, "validate", str(inv), "--roles", str(roles))
    assert code == 1 and "mx1: error: " in err
    out_dir = inv.parent / "out"
    assert run(capsys, "render", str(inv), "--roles", str(roles), "--out", str(out_dir))[0] == 1
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize(
    ("argv", "outcome", "message"),
    [
        (["--forks", "0"], "usage", "'0' is not a positive integer"),
        (["--host", "mx7"], "error", "unknown host(s) mx7"),
    ],
)
def test_json_for_bad_arguments(
    inv: Path, capsys: pytest.CaptureFixture[str], argv: list[str], outcome: str, message: str
) -> None:
    code, doc = plan_json(capsys, str(inv), *argv)
    assert code == 1 and doc["plans"] == []
    (error,) = doc["errors"]  # type: ignore[misc]
    assert error["outcome"] == outcome and message in error["message"]
    # `--format=json` before the error counts too.
    code, out, _ = run(capsys, "plan", str(inv), "--format=json", *argv)
    assert code == 1 and json.loads(out)["errors"][0]["outcome"] == outcome


def test_json_for_a_missing_inventory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = plan_json(capsys, str(tmp_path / "nope"))
    assert code == 1 and "nope: no such directory" in doc["errors"][0]["message"]  # type: ignore[index]


# --- one recap for plan and apply ---------------------------------------------------------------


def recap_of(out: str) -> list[str]:
    lines = out.splitlines()
    return lines[lines.index("recap:") :]


def test_plan_and_apply_end_with_the_same_recap(
    inv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_unreachable_host(inv)
    code, out, _ = run(capsys, "plan", str(inv))
    planned = recap_of(out)
    assert (
        code == 1
        and planned[0] == "recap:"
        and planned[-1] == ("ok=0, changed=1, failed=0, unreachable=1")
    )
    assert re.fullmatch(r"mx1  changed      \d+ to create, 0 to update, 0 to delete", planned[1])
    assert planned[2].startswith("mx9  unreachable  mx9: connect")
    code, out, _ = run(capsys, "apply", str(inv))
    applied = recap_of(out)
    assert code == 1 and out.endswith("\n".join(applied) + "\n")  # the last lines
    assert re.fullmatch(r"mx1  changed      release \S+", applied[1])
    assert "skipped: a local root runs no services" in applied[2]  # mx1's warning
    assert applied[3] == planned[2] and applied[-1] == planned[-1]
    code, out, _ = run(capsys, "plan", str(inv), "--format", "markdown")
    fenced = recap_of(out)
    assert code == 1 and out.endswith("\n".join(fenced) + "\n") and fenced[-1] == "```"
    assert out.splitlines()[-len(fenced) - 1] == "```"
    assert fenced[1] == "mx1  ok           no changes" and fenced[2] == planned[2]


# --- wording ------------------------------------------------------------------------------------


def test_a_local_host_says_it_reloads_nothing(
    inv: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "plan", str(inv), "--format", "summary")
    assert code == 0 and out.splitlines()[0].endswith(
        "to delete; local host: services are not reloaded"
    )
    assert "reload postfix" not in out
    _, out, _ = run(capsys, "plan", str(inv), "--format", "json")
    plan = json.loads(out)["plans"][0]
    assert plan["runs_services"] is False
    assert {a["does"] for a in plan["activations"]} == {"local host: services are not reloaded"}
    # MAILCFG_SERVICES=run makes a local root run them (the on-host program's rule): then
    # the plan says what each role's apply does. A new unit file restarts the agent.
    monkeypatch.setenv("MAILCFG_SERVICES", "run")
    _, out, _ = run(capsys, "plan", str(inv), "--format", "summary")
    assert (
        "; then restart mailcfg-agent (its systemd unit changed), reload dovecot if running and"
        " dovecot.conf or its TLS pair changed" in out
    )
    monkeypatch.delenv("MAILCFG_SERVICES")
    assert run(capsys, "apply", str(inv))[0] == 0  # a local root: nothing is reloaded
    # Only agent.json (and the maps) change: the agent rereads it, no restart.
    (inv / "domains/example.com.yml").write_text(DOMAIN_YML + CAROL)
    monkeypatch.setenv("MAILCFG_SERVICES", "run")
    _, out, _ = run(capsys, "plan", str(inv), "--format", "summary")
    assert "mailcfg-agent rereads its config itself (restarted only if stopped)" in out
    assert "restart mailcfg-agent" not in out and "reload postfix if running" in out


# --- the README's exit codes --------------------------------------------------------------------

# Each (command, code) the README's table states, and a test that produces it.
PRODUCED_BY = {
    ("validate", 0): "test_cli.py::test_validate_and_check_alias",
    ("validate", 1): "test_cli_report.py::test_json_for_an_invalid_inventory",
    ("render", 0): "test_cli.py::test_render",
    ("render", 1): "test_cli_report.py::test_json_for_a_host_that_does_not_render",
    ("plan", 0): "test_cli.py::test_plan_apply_plan_exit_codes",
    ("plan", 1): "test_cli_report.py::test_json_for_an_unreachable_host",
    ("plan", 2): "test_cli.py::test_plan_apply_plan_exit_codes",
    ("apply", 0): "test_cli.py::test_plan_apply_plan_exit_codes",
    ("apply", 1): "test_cli_report.py::test_plan_and_apply_end_with_the_same_recap",
    ("rollback", 0): "test_cli.py::test_releases_and_rollback",
    ("rollback", 1): "test_cli.py::test_rollback_asks_on_a_terminal",
    ("unlock", 0): "test_cli_agent.py::test_unlock_asks_every_host_and_says_what_each_did",
    ("unlock", 1): "test_cli_agent.py::test_unlock_asks_every_host_and_says_what_each_did",
    ("stats", 0): "test_cli_agent.py::test_stats_gathers_rows_from_every_agent",
    ("stats", 1): "test_cli_agent.py::test_stats_of_a_failing_host_leaves_the_others",
    ("dns", 0): "test_dnsrecords.py::test_cli_dns_formats_and_policy_file",
    ("dns", 1): "test_dnsrecords.py::test_cli_dns_formats_and_policy_file",
    ("doctor", 0): "test_doctor.py::test_cli_doctor_exit_codes_and_json",
    ("doctor", 1): "test_doctor.py::test_cli_doctor_exit_codes_and_json",
    ("mailcfg", 2): "test_cli_help.py::test_bare_mailcfg_prints_usage_and_exits_2",
}


def readme_exit_codes() -> set[tuple[str, int]]:
    """The (command, code) pairs of the README's exit-code table: a non-empty cell."""
    text = (REPO / "README.md").read_text()
    header = "| command | 0 | 1 | 2 |"
    assert header in text, "the README has no exit-code table"
    rows = text[text.index(header) :].splitlines()[2:]
    found = set()
    for row in rows:
        if not row.startswith("|"):
            break
        cells = [c.strip() for c in row.strip("|").split("|")]
        command = re.match(r"`(?:mailcfg )?(\w+)", cells[0])
        assert command, row
        name = "mailcfg" if "alone" in cells[0] else command.group(1)
        found |= {(name, code) for code, cell in enumerate(cells[1:]) if cell}
    return found


def test_every_exit_code_the_readme_states_is_produced_by_a_test() -> None:
    assert readme_exit_codes() == set(PRODUCED_BY)
    for (_command, code), where in PRODUCED_BY.items():
        filename, name = where.split("::")
        tree = ast.parse((Path(__file__).parent / filename).read_text())
        (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        # The test compares an exit code with this one somewhere (`code == 2`, `[0] == 1`, ...).
        compared = {
            c.value
            for node in ast.walk(function)
            if isinstance(node, ast.Compare)
            for c in [node.left, *node.comparators]
            if isinstance(c, ast.Constant) and isinstance(c.value, int)
        }
        assert code in compared, f"{where} never compares an exit code with {code}"
