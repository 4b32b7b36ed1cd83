"""The web app through Flask's test client: login, cookie flags, CSRF, throttling, the user
pages, the domain admin's pages, and 403 with no commit for another account's URL or form."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from compiler.web.app import WebConfig, create_app
from compiler.web.throttle import ThrottleRule
from tests.webinventory import PASSWORD, WebInventory, make_web_inventory


@pytest.fixture
def web(tmp_path: Path) -> WebInventory:
    return make_web_inventory(tmp_path)


@pytest.fixture
def app(web: WebInventory, tmp_path: Path) -> Flask:
    config = WebConfig(
        inventory=web.inventory,
        secret_file=tmp_path / "state" / "web-secret",
        throttle=ThrottleRule(ip_limit=6, address_limit=3, address_pause=30),
    )
    return create_app(config)


def _client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"  # the cookie is Secure
    return client


def _csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def _login(client: FlaskClient, address: str, password: str = PASSWORD, ip: str = "192.0.2.1"):  # type: ignore[no-untyped-def]
    token = _csrf(client, "/login")
    return client.post(
        "/login",
        data={"address": address, "password": password, "csrf": token},
        environ_base={"REMOTE_ADDR": ip},
    )


def _head(web: WebInventory) -> str:
    return web.git("rev-parse", "HEAD").strip()


def test_login_sets_a_secure_http_only_session_cookie(app: Flask) -> None:
    client = _client(app)
    response = _login(client, "carol@example.com")
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert PASSWORD not in cookie
    summary = client.get("/account/carol@example.com").get_data(as_text=True)
    assert "mx1.example.com" in summary and "993" in summary and "STARTTLS" in summary


def test_a_form_without_the_csrf_token_is_refused(app: Flask, web: WebInventory) -> None:
    client = _client(app)
    assert (
        client.post(
            "/login", data={"address": "carol@example.com", "password": PASSWORD}
        ).status_code
        == 400
    )
    _login(client, "carol@example.com")
    head = _head(web)
    response = client.post(
        "/account/carol@example.com/lists",
        data={"which": "blacklist", "enabled": "on", "entries": "@spam.test"},
    )
    assert response.status_code == 400 and _head(web) == head


def test_wrong_passwords_are_refused_then_throttled(app: Flask) -> None:
    client = _client(app)
    for _ in range(3):
        assert (
            _login(client, "carol@example.com", "wrong-password", ip="203.0.113.5").status_code
            == 401
        )
    throttled = _login(client, "carol@example.com", "wrong-password", ip="203.0.113.6")
    assert throttled.status_code in (401, 429)  # the one slot of the pause
    refused = _login(client, "carol@example.com", PASSWORD, ip="203.0.113.7")
    assert refused.status_code == 429 and "Try again in" in refused.get_data(as_text=True)
    # An unknown address costs the same and says the same.
    assert _login(client, "nobody@example.com", "x-password", ip="192.0.2.77").status_code == 401


def test_a_user_changes_their_own_settings(app: Flask, web: WebInventory) -> None:
    client = _client(app)
    _login(client, "carol@example.com")
    path = "/account/carol@example.com/autoresponder"
    token = _csrf(client, path)
    page = client.get(path).get_data(as_text=True)
    assert "spam" in page and "white list" in page  # the panel's warning
    response = client.post(
        path,
        data={
            "csrf": token,
            "enabled": "on",
            "only_whitelisted": "on",
            "subject": "On holiday",
            "body": "Back in January.",
            "start": "2026-12-20",
            "end": "2027-01-06",
        },
        follow_redirects=True,
    )
    assert response.status_code == 200 and "Saved: web: carol@example.com" in response.get_data(
        as_text=True
    )
    assert web.git("log", "-1", "--format=%ae").strip() == "carol@example.com"
    for form in (
        {"which": "whitelist", "enabled": "on", "entries": "bob@example.org\n@example.net"},
        {"which": "blacklist", "enabled": "on", "entries": "@spam.test"},
    ):
        assert (
            client.post(
                "/account/carol@example.com/lists", data={"csrf": token, **form}
            ).status_code
            == 302
        )
    redirect = {"csrf": token, "mode": "copy", "to": "carol@example.org"}
    assert client.post("/account/carol@example.com/redirect", data=redirect).status_code == 302
    text = web.domain_text("example.com")
    assert "to: [carol@example.org, carol@example.com]" in text and '"@spam.test"' in text
    bad = client.post(
        "/account/carol@example.com/lists",
        data={"csrf": token, "which": "whitelist", "enabled": "on", "entries": "bad entry"},
    )
    assert bad.status_code == 400 and "example.com.yml:" in bad.get_data(as_text=True)


def test_another_accounts_url_and_form_get_403_and_no_commit(app: Flask, web: WebInventory) -> None:
    client = _client(app)
    _login(client, "carol@example.com")
    token = _csrf(client, "/account/carol@example.com/password")
    head = _head(web)
    assert client.get("/account/bob@example.com").status_code == 403
    assert client.get("/account/bob@example.com/password").status_code == 403
    assert client.get("/domain/example.com").status_code == 403
    for path, data in (
        ("/account/bob@example.com/password", {"password": "hijacked-1", "repeat": "hijacked-1"}),
        ("/account/orders@example.org/lists", {"which": "whitelist", "entries": ""}),
        (
            "/domain/example.com/accounts",
            {"name": "mallory", "password": "mallory-pw-1", "repeat": "mallory-pw-1"},
        ),
        ("/domain/example.com/account/bob@example.com", {"action": "delete"}),
    ):
        assert client.post(path, data={"csrf": token, **data}).status_code == 403, path
    assert _head(web) == head


def test_a_domain_admin_adds_accounts_in_their_domain_only(app: Flask, web: WebInventory) -> None:
    client = _client(app)
    _login(client, "alice@example.com")
    token = _csrf(client, "/domain/example.com")
    new = {
        "csrf": token,
        "name": "dan",
        "password": "dan-password-1",
        "repeat": "dan-password-1",
        "quota": "1G",
        "imap": "on",
        "enabled": "on",
    }
    response = client.post("/domain/example.com/accounts", data=new, follow_redirects=True)
    assert response.status_code == 200 and "dan@example.com" in response.get_data(as_text=True)
    assert "name: dan" in web.domain_text("example.com")
    head = _head(web)
    assert client.post("/domain/example.org/accounts", data=new).status_code == 403
    smuggled = {**new, "name": "dan@example.org"}  # another domain's address through their form
    assert client.post("/domain/example.com/accounts", data=smuggled).status_code == 403
    assert (
        client.post(
            "/domain/example.com/account/orders@example.org",
            data={"csrf": token, "action": "delete"},
        ).status_code
        == 403
    )
    assert _head(web) == head
    # An admin uses the user pages for an account of their domain.
    assert client.get("/account/bob@example.com/autoresponder").status_code == 200


def test_a_password_changed_elsewhere_ends_other_sessions(app: Flask) -> None:
    first, second = _client(app), _client(app)
    _login(first, "carol@example.com")
    _login(second, "carol@example.com")
    token = _csrf(first, "/account/carol@example.com/password")
    response = first.post(
        "/account/carol@example.com/password",
        data={"csrf": token, "password": "brand-new-pw", "repeat": "brand-new-pw"},
    )
    assert response.status_code == 302
    assert first.get("/account/carol@example.com").status_code == 200  # this session goes on
    assert second.get("/account/carol@example.com").status_code == 302  # back to the login
    assert _login(second, "carol@example.com", "brand-new-pw").status_code == 302


def test_an_invalid_working_copy_shows_503_not_a_traceback(app: Flask, web: WebInventory) -> None:
    client = _client(app)
    _login(client, "carol@example.com")
    (web.inventory / "mailcfg.yml").write_text("schema_version: 1\nhosts: [\n")
    assert client.get("/account/carol@example.com").status_code == 503


def test_the_command_refuses_what_it_cannot_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compiler.cli import main

    web = make_web_inventory(tmp_path)
    inside = web.repo / "secret"
    assert main(["web", str(web.inventory), "--secret-file", str(inside)]) == 1
    assert "must be outside the git working copy" in capsys.readouterr().err and not inside.exists()
    loose = tmp_path / "loose-secret"
    loose.write_text("x" * 64)
    loose.chmod(0o644)
    assert main(["web", str(web.inventory), "--secret-file", str(loose)]) == 1
    assert "readable by others" in capsys.readouterr().err
    plain = tmp_path / "plain"
    shutil.copytree(web.inventory, plain)  # the inventory, without git
    assert main(["web", str(plain), "--secret-file", str(tmp_path / "s2")]) == 1
    err = capsys.readouterr().err
    assert "not a git repository" in err and "Traceback" not in err
