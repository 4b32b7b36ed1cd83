"""Screenshots of `mailcfg web`'s main pages for the README (docs/web/*.png).

Serves a throwaway git copy of the example inventory (nothing is committed here), logs in
with the README's demo passwords in Debian's headless Chromium, and saves each page.
Run: .venv/bin/python scripts/web-screenshots.py
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "web"
PORT = 23581
BASE = f"http://localhost:{PORT}"
PAGES = (  # (file, account, password, path, height)
    ("summary", "carol@example.com", "carol-demo-pw", "/account/carol@example.com", 900),
    (
        "autoresponder",
        "alice@example.com",
        "alice-demo-pw",
        "/account/alice@example.com/autoresponder",
        820,
    ),
    ("lists", "alice@example.com", "alice-demo-pw", "/account/alice@example.com/lists", 760),
    ("domain", "postmaster@example.com", "dave-demo-pw1", "/domain/example.com", 1000),
    ("stats", "postmaster@example.com", "dave-demo-pw1", "/domain/example.com/stats", 1150),
)


def seed_statistics(inventory: Path, cache: Path) -> None:
    """Ten days of made-up counters on the example's local hosts (applied first, so their
    agent configs exist): bob's password is "stolen" on day 7 (login failures), then he sends
    far over his limit."""
    from compiler.web.deploy import apply_domain
    from runtime.state.sqlite import SqliteStore

    apply_domain(inventory, "example.com", cache)
    rng = random.Random(1)
    for host in ("mx1", "mx2"):
        store = SqliteStore(inventory / ".mailcfg/hosts" / host / "var/lib/mailcfg/agent/state.db")
        for day in range(1, 11):
            for name in ("alice", "bob", "carol"):
                stolen = name == "bob" and day >= 8
                counters = {
                    "sent": (rng.randint(5, 60) + (400 if stolen else 0)) // 2,
                    "received": rng.randint(10, 50),
                    "imap_logins": 3,
                    "login_failures": 30 if name == "bob" and day == 7 else 0,
                    "rejected": rng.randint(0, 4),
                }
                store.add_stats(f"2026-12-{day:02d}", f"{name}@example.com", counters)
        if host == "mx1":
            store.lock("bob@example.com", "per_day exceeded: 301 of 300", 0.0)
        store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(
            ROOT / "inventory", repo / "inventory", ignore=shutil.ignore_patterns(".mailcfg")
        )
        for args in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "x"],
        ):
            subprocess.run(["git", "-C", str(repo), *args], check=True)
        (repo / ".gitignore").write_text(".mailcfg/\n")
        sys.path.insert(0, str(ROOT))
        seed_statistics(repo / "inventory", Path(tmp) / "cache")
        server = subprocess.Popen(
            [sys.executable, "-m", "compiler", "web", str(repo / "inventory"),
             "--server-admin", "postmaster@example.com", "--listen", f"127.0.0.1:{PORT}",
             "--secret-file", str(Path(tmp) / "secret"), "--cache", str(Path(tmp) / "cache")],
            cwd=ROOT,
            # `mailcfg stats` runs the local hosts' `mailcfg-agent` found on the PATH.
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )  # fmt: skip
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ):
            options.add_argument(arg)
        service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
        try:
            for _ in range(150):
                try:
                    socket.create_connection(("127.0.0.1", PORT), 1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            OUT.mkdir(parents=True, exist_ok=True)
            for name, address, password, path, height in PAGES:
                driver = webdriver.Chrome(options=options, service=service)
                try:
                    driver.set_window_size(1000, height)
                    driver.get(f"{BASE}/login")
                    driver.find_element(By.ID, "address").send_keys(address)
                    driver.find_element(By.ID, "password").send_keys(password)
                    driver.find_element(By.ID, "login").click()
                    time.sleep(0.5)
                    driver.get(BASE + path)
                    time.sleep(0.3)
                    driver.save_screenshot(str(OUT / f"{name}.png"))
                finally:
                    driver.quit()
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
