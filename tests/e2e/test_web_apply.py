"""`mailcfg web --apply` against a real mail host: a change made on the web is committed, then
applied over SSH to the network-namespace host running real Postfix, Dovecot and the agent
(the harness of test_no_interruption): the new password logs in over IMAP (the old one no
longer does) and the autoresponder set on the web answers mail sent through submission.
"""

from __future__ import annotations

import http.client
import os
import re
import smtplib
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import pytest
from netns import NetnsLab, wait_until
from test_no_interruption import (
    BOB,
    CAROL,
    PASSWORD,
    REPO,
    MailServer,
    client_tls,
    imap_login_works,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PORT = 23527
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Session:
    """A person's HTTP session with the web app (the Secure cookie kept by hand)."""

    def __init__(self) -> None:
        self.cookie = ""

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=200)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and value.startswith("mailcfg_session="):
                self.cookie = value.split(";", 1)[0]
        conn.close()
        return response.status, text

    def post_form(self, path: str, form: dict[str, str]) -> str:
        """POST with the page's CSRF token; the page shown after the redirect."""
        status, page = self.request("GET", path)
        token = _CSRF.search(page)
        assert status == 200 and token, (status, page[:300])
        status, _ = self.request("POST", path, {**form, "csrf": token.group(1)})
        assert status in (302, 303), status
        return self.request("GET", path)[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, sshd, Postfix, Dovecot)")
    with NetnsLab() as lab:
        server = MailServer(lab, tmp_path_factory.mktemp("web-apply"))
        try:
            result = server.apply()
            assert result.returncode == 0, result.stdout + result.stderr
            server.start_services()
            yield server
        finally:
            server.stop_services()


@pytest.fixture(scope="module")
def web(server: MailServer) -> Iterator[None]:
    inventory = server.inventory
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "inventory"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(inventory), *args],
            check=True,
        )
    process = subprocess.Popen(
        [sys.executable, "-m", "compiler", "web", str(inventory), "--apply",
         "--cache", str(server.workdir / "cache"), "--listen", f"127.0.0.1:{PORT}",
         "--secret-file", str(server.workdir / "web-secret")],
        cwd=server.workdir, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                return True
            except OSError:
                assert process.poll() is None, process.communicate()[0]
                return False

        wait_until(listening, "mailcfg web", timeout=60)
        yield
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
        assert "carol web 1" not in output


def _git(server: MailServer, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(server.inventory), *args], capture_output=True, text=True, check=True
    ).stdout


def test_a_web_change_is_applied_to_the_real_host(server: MailServer, web: None) -> None:
    carol = Session()
    status, page = carol.request("GET", "/login")
    token = _CSRF.search(page)
    assert token
    status, _ = carol.request(
        "POST",
        "/login",
        {"address": CAROL, "password": server.carol_password, "csrf": token.group(1)},
    )
    assert status == 302

    page = carol.post_form(
        f"/account/{CAROL}/password", {"password": "carol web 1", "repeat": "carol web 1"}
    )
    assert "password changed" in page and "mx  changed" in page, page
    assert _git(server, "log", "-1", "--format=%ae %s").strip() == (
        f"{CAROL} web: {CAROL}: password changed"
    )
    address = server.net.address
    assert imap_login_works(address, CAROL, "carol web 1")
    assert not imap_login_works(address, CAROL, server.carol_password)

    page = carol.post_form(
        f"/account/{CAROL}/autoresponder",
        {"enabled": "on", "subject": "Web away", "body": "Set on the web.\n"},
    )
    assert "autoresponder on" in page and "mx  changed" in page, page
    with smtplib.SMTP(address, 587, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.starttls(context=client_tls())
        smtp.ehlo("client.example")
        smtp.login(BOB, PASSWORD)
        mail = f"From: {BOB}\r\nTo: {CAROL}\r\nSubject: are you there\r\n\r\nhello\r\n"
        assert not smtp.sendmail(BOB, [CAROL], mail)

    def answered() -> bool:
        server.flush_queue()
        return "Web away" in server.subjects(BOB)

    wait_until(answered, "the autoresponder's reply in bob's mailbox", timeout=60)
    assert "are you there" in server.subjects(CAROL)
