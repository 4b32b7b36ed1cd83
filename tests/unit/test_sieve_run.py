"""Autoresponder Sieve scripts, run by Pigeonhole's own `sievec` and `sieve-test`.

The checks that need no Pigeonhole binary are in test_sieve_render.py."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from compiler.render.sieve import make_vacation_script
from schemas.domain import Autoresponder, SenderList

pytestmark = pytest.mark.skipif(
    shutil.which("sieve-test") is None, reason="dovecot-sieve is installed by scripts/test.sh"
)

ACCOUNT = "alice@example.com"


@pytest.fixture
def sieve_env() -> Iterator[Path]:
    # sieve-test drops to mail_uid (nobody): pytest's tmp root is 0700, so use a dir of its own.
    tmp_path = Path(tempfile.mkdtemp(prefix="mailcfg-sieve-"))
    tmp_path.chmod(0o777)
    (tmp_path / "mail").mkdir(mode=0o777)
    (tmp_path / "test.conf").write_text(
        "mail_uid = nobody\nmail_gid = nogroup\nfirst_valid_uid = 1\nssl = no\nprotocols =\n"
        f"mail_location = maildir:{tmp_path}/mail\n"
    )
    yield tmp_path
    shutil.rmtree(tmp_path)


def run_sieve(
    env: Path, script: str, *, sender: str, headers: str = "", body: str = "hello\n"
) -> str:
    """Run `sieve-test` on one message; return its report of performed actions."""
    (env / "script.sieve").write_text(script, encoding="utf-8")
    message = f"From: {sender or 'daemon@x.org'}\nTo: {ACCOUNT}\nSubject: hi\n{headers}\n{body}"
    (env / "msg.eml").write_text(message)
    proc = subprocess.run(
        [
            "sieve-test",
            "-c",
            str(env / "test.conf"),
            "-f",
            sender,  # sieve-test cannot simulate the null sender "<>"
            "-r",
            ACCOUNT,
            str(env / "script.sieve"),
            str(env / "msg.eml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def replies(report: str) -> bool:
    return "send vacation message" in report


def responder(**kw: object) -> Autoresponder:
    base: dict[str, object] = {"subject": "Away", "body": "Back on Monday."}
    return Autoresponder.model_validate(base | kw)


def test_plain_message_gets_a_reply(sieve_env: Path) -> None:
    assert replies(
        run_sieve(sieve_env, make_vacation_script(ACCOUNT, responder()), sender="bob@other.org")
    )


@pytest.mark.parametrize(
    ("sender", "headers"),
    [
        ("bob@other.org", "List-Id: <team.other.org>\n"),
        ("bob@other.org", "List-Unsubscribe: <mailto:u@other.org>\n"),
        ("bob@other.org", "Precedence: bulk\n"),
        ("bob@other.org", "Precedence: JUNK\n"),
        ("bob@other.org", "Auto-Submitted: auto-replied\n"),
        ("MAILER-DAEMON@other.org", ""),
        ("noreply@shop.example", ""),
        ("team-request@lists.example", ""),
        ("owner-team@lists.example", ""),
    ],
)
def test_lists_bulk_and_automatic_mail_get_no_reply(
    sieve_env: Path, sender: str, headers: str
) -> None:
    script = make_vacation_script(ACCOUNT, responder())
    assert not replies(run_sieve(sieve_env, script, sender=sender, headers=headers))


def test_auto_submitted_no_is_a_person(sieve_env: Path) -> None:
    script = make_vacation_script(ACCOUNT, responder())
    assert replies(
        run_sieve(sieve_env, script, sender="bob@other.org", headers="Auto-Submitted: no\n")
    )


def test_only_whitelisted(sieve_env: Path) -> None:
    wl = SenderList(enabled=True, entries=["bob@other.org", "@friends.net"])
    script = make_vacation_script(ACCOUNT, responder(only_whitelisted=True), whitelist=wl)
    assert replies(run_sieve(sieve_env, script, sender="bob@other.org"))
    assert replies(run_sieve(sieve_env, script, sender="carol@friends.net"))
    assert not replies(run_sieve(sieve_env, script, sender="mallory@spam.example"))


def test_only_whitelisted_with_empty_list_answers_nobody(sieve_env: Path) -> None:
    script = make_vacation_script(ACCOUNT, responder(only_whitelisted=True), whitelist=None)
    assert not replies(run_sieve(sieve_env, script, sender="bob@other.org"))


def test_date_window(sieve_env: Path) -> None:
    today = dt.date.today()
    past = responder(start=today - dt.timedelta(days=10), end=today - dt.timedelta(days=1))
    now = responder(start=today - dt.timedelta(days=1), end=today + dt.timedelta(days=1))
    future = responder(start=today + dt.timedelta(days=1))
    assert not replies(run_sieve(sieve_env, make_vacation_script(ACCOUNT, past), sender="b@o.org"))
    assert replies(run_sieve(sieve_env, make_vacation_script(ACCOUNT, now), sender="b@o.org"))
    assert not replies(
        run_sieve(sieve_env, make_vacation_script(ACCOUNT, future), sender="b@o.org")
    )


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ('Out "of" office', 'He said "back soon".'),
        ('Back\\slash \\\\ and \\"', "C:\\temp\\new \\n is not a newline\n"),
        ("Café - 休暇中", "Réponse automatique.\nÄußerst wichtig: 日本語.\n"),
        ("Dots", "line one\n.\n..\nlast"),
        ("Sieve-looking", '";\nkeep;\ndiscard;\n# "'),
    ],
)
def test_subject_and_body_survive_exactly(sieve_env: Path, subject: str, body: str) -> None:
    script = make_vacation_script(ACCOUNT, responder(subject=subject, body=body))
    subprocess.run(
        ["sievec", "-c", str(sieve_env / "test.conf"), "-", "/dev/null"],
        input=script,
        text=True,
        capture_output=True,
        check=False,
    )
    report = run_sieve(sieve_env, script, sender="bob@other.org")
    assert replies(report)
    assert f"=> subject : {subject}\n" in report
    sent = re.search(r"START MESSAGE\n(.*)\nEND MESSAGE", report, re.S)
    assert sent is not None
    assert sent.group(1) == body.rstrip("\n") or sent.group(1) == body
    # A body that looks like Sieve must not become code: exactly one action was taken.
    assert report.count("send vacation message") == 1
    assert "discard" not in report.split("Implicit keep")[0].replace(body, "")


def test_every_script_compiles_with_sievec(sieve_env: Path) -> None:
    wl = SenderList(enabled=True, entries=["@friends.net"])
    for r in (
        responder(),
        responder(only_whitelisted=True),
        responder(start=dt.date(2026, 1, 1), end=dt.date(2026, 2, 1)),
    ):
        path = sieve_env / "c.sieve"
        path.write_text(make_vacation_script(ACCOUNT, r, aliases=["s@example.com"], whitelist=wl))
        subprocess.run(
            ["sievec", "-c", str(sieve_env / "test.conf"), str(path), str(sieve_env / "c.svbin")],
            check=True,
            capture_output=True,
        )
