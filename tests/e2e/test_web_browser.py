"""`mailcfg web` in a real browser: the real command serving a git working copy, driven in
Debian's headless Chromium through its chromium-driver (Selenium never downloads anything).

A user logs in, changes the autoresponder and the password (each one commit: the person as
author, one file, the expected diff, `mailcfg validate` passing); another account's URL and
form get 403 and no commit; a domain admin adds an account in their domain and cannot in
another; a wrong password is refused, then throttled; two browsers editing at once both land.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from compiler.cli import main
from tests.webinventory import PASSWORD, WebInventory, make_web_inventory

pytestmark = pytest.mark.e2e

PORT = 23517
BASE = f"http://localhost:{PORT}"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):  # pragma: no cover
    pytest.skip("Debian's chromium and chromium-driver are needed", allow_module_level=True)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebInventory:
    return make_web_inventory(tmp_path_factory.mktemp("webbrowser"))


@pytest.fixture(scope="module")
def server(web: WebInventory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    state = tmp_path_factory.mktemp("webstate")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "compiler",
            "web",
            str(web.inventory),
            "--listen",
            f"127.0.0.1:{PORT}",
            "--secret-file",
            str(state / "secret"),
            "--cache",
            str(state / "cache"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mailcfg web did not start: {process.stdout and process.stdout.read()}"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
        assert PASSWORD not in output and "new-password-2" not in output  # never logged


def _browser() -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def browser(server: None) -> Iterator[WebDriver]:
    driver = _browser()
    try:
        yield driver
    finally:
        driver.quit()


def _login(driver: WebDriver, address: str, password: str = PASSWORD) -> None:
    driver.get(f"{BASE}/login")
    driver.find_element(By.ID, "address").send_keys(address)
    driver.find_element(By.ID, "password").send_keys(password)
    _submit(driver, "login")


def _submit(driver: WebDriver, button_id: str) -> None:
    """Click a submit button and wait until the answer's page has replaced this one: the old
    document carries a mark the new one lacks. (Waiting for an element of the old page to go
    stale is racy: mid-navigation chromedriver may answer "Node with given id does not belong
    to the document", an unknown error, instead of a stale element.)"""
    driver.execute_script("window.mailcfgOldPage = true")
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, 60, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return window.mailcfgOldPage === undefined && document.readyState === 'complete'"
        )
    )


def _fill(driver: WebDriver, element_id: str, text: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(text)


def _head(web: WebInventory) -> str:
    return web.git("rev-parse", "HEAD").strip()


def _status(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def test_a_user_changes_the_autoresponder_and_the_password(
    web: WebInventory, browser: WebDriver
) -> None:
    _login(browser, "carol@example.com")
    assert "Account summary: carol@example.com" in _status(browser)
    assert "mx1.example.com" in browser.find_element(By.ID, "settings").text
    cookie = browser.get_cookie("mailcfg_session")
    assert cookie and cookie["httpOnly"] and cookie["secure"]

    head = _head(web)
    browser.get(f"{BASE}/account/carol@example.com/autoresponder")
    assert "spammer" in browser.find_element(By.ID, "spam-warning").text
    _fill(browser, "subject", "On holiday")
    _fill(browser, "body", "Back in January.\nCarol")
    browser.execute_script(
        "document.getElementById('start').value='2026-12-20';"
        "document.getElementById('end').value='2027-01-06';"
    )
    _submit(browser, "save")
    assert (
        "Saved: web: carol@example.com: autoresponder on"
        in browser.find_element(By.ID, "saved").text
    )
    assert web.git("rev-list", "--count", f"{head}..HEAD").strip() == "1"
    assert (
        web.git("log", "-1", "--format=%an <%ae>").strip()
        == "carol@example.com <carol@example.com>"
    )
    assert web.git("show", "--name-only", "--format=", "HEAD").split() == [
        "inventory/domains/example.com.yml"
    ]
    added = [
        line[1:]
        for line in web.git("show", "--format=", "HEAD").splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    assert [line.strip() for line in added] == [
        "autoresponder:",
        "enabled: true",
        "only_whitelisted: true",
        "subject: On holiday",
        "body: |",
        "Back in January.",
        "Carol",
        "start: 2026-12-20",
        "end: 2027-01-06",
    ]
    removed = [
        line
        for line in web.git("show", "--format=", "HEAD").splitlines()
        if line.startswith("-") and not line.startswith("---")
    ]
    assert removed == []  # nothing else of the file (comments, layout) changed

    browser.get(f"{BASE}/account/carol@example.com/password")
    _fill(browser, "new-password", "new-password-2")
    _fill(browser, "repeat-password", "new-password-2")
    _submit(browser, "save")
    assert "password changed" in browser.find_element(By.ID, "saved").text
    message = web.git("log", "-1", "--format=%B")
    assert "new-password-2" not in message and "$2b$" not in message
    assert web.git("show", "--stat", "--format=", "HEAD").count("|") == 1
    assert main(["validate", str(web.inventory)]) == 0

    _submit(browser, "logout")
    _login(browser, "carol@example.com", "new-password-2")
    assert "Account summary: carol@example.com" in _status(browser)


def test_another_accounts_url_and_form_get_403_and_no_commit(
    web: WebInventory, browser: WebDriver
) -> None:
    _login(browser, "bob@example.com")
    head = _head(web)
    browser.get(f"{BASE}/account/alice@example.com/lists")
    assert "Forbidden" in _status(browser)
    # Bob's own form, pointed at Alice's account (what a hand-made request does).
    browser.get(f"{BASE}/account/bob@example.com/lists")
    browser.execute_script(
        "document.getElementById('form-whitelist').action='/account/alice@example.com/lists';"
    )
    _submit(browser, "save-whitelist")
    assert "Forbidden" in _status(browser)
    browser.get(f"{BASE}/domain/example.com")
    assert "Forbidden" in _status(browser)
    assert _head(web) == head


def test_a_domain_admin_adds_an_account_in_their_domain_only(
    web: WebInventory, browser: WebDriver
) -> None:
    _login(browser, "alice@example.com")
    browser.get(f"{BASE}/domain/example.com")
    _fill(browser, "new-name", "dan")
    _fill(browser, "new-password", "dan-password-1")
    _fill(browser, "new-repeat", "dan-password-1")
    _fill(browser, "new-quota", "1G")
    _submit(browser, "add")
    assert "dan@example.com: account added" in browser.find_element(By.ID, "saved").text
    assert web.git("log", "-1", "--format=%ae").strip() == "alice@example.com"
    assert "name: dan" in web.domain_text("example.com")

    head = _head(web)
    browser.get(f"{BASE}/domain/example.org")
    assert "Forbidden" in _status(browser)
    browser.get(f"{BASE}/domain/example.com")
    browser.execute_script(
        "document.getElementById('add-account').action='/domain/example.org/accounts';"
    )
    _fill(browser, "new-name", "eve")
    _fill(browser, "new-password", "eve-password-1")
    _fill(browser, "new-repeat", "eve-password-1")
    _submit(browser, "add")
    assert "Forbidden" in _status(browser)
    assert _head(web) == head and "eve" not in web.domain_text("example.org")


def test_a_wrong_password_is_refused_and_throttled(web: WebInventory, browser: WebDriver) -> None:
    for _ in range(5):
        _login(browser, "postmaster@example.com", "not-the-password")
        assert "Wrong address or password" in _status(browser)
    _login(browser, "postmaster@example.com", "not-the-password")  # the pause's one slot
    _login(browser, "postmaster@example.com", PASSWORD)
    assert "Too many failed logins" in _status(browser)
    assert browser.get_cookie("mailcfg_session") is None or "Log out" not in _status(browser)


def test_two_browsers_editing_at_once_both_land(web: WebInventory, server: None) -> None:
    head = _head(web)
    drivers = [_browser(), _browser()]
    try:
        for driver, who in zip(drivers, ("bob@example.org", "orders@example.org"), strict=True):
            _login(driver, who)
            driver.get(f"{BASE}/account/{who}/lists")
            _fill(driver, "blacklist-entries", f"@spam-{who.split('@')[0]}.test")
        results: list[str] = []

        def save(driver: WebDriver) -> None:
            _submit(driver, "save-blacklist")
            results.append(driver.find_element(By.ID, "saved").text)

        threads = [threading.Thread(target=save, args=(d,)) for d in drivers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for driver in drivers:
            driver.quit()
    assert len(results) == 2 and all(r.startswith("Saved:") for r in results)
    assert web.git("rev-list", "--count", f"{head}..HEAD").strip() == "2"
    text = web.domain_text("example.org")
    assert "@spam-bob.test" in text and "@spam-orders.test" in text
    assert web.git("status", "--porcelain") == ""
    assert main(["validate", str(web.inventory)]) == 0
