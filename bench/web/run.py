"""Benchmark of `mailcfg web`: login + one change + its commit, for N concurrent users (run by
hand: `.venv/bin/python bench/web/run.py [--users 20] [--rounds 5]`).

The real `mailcfg web` serves a git copy of the example inventory to which N accounts are
added, all in example.com (one domain file: every commit contends for the same lock and
file, the worst case), each with a `{BLF-CRYPT}` hash at cost 12 as `mailcfg passwd` makes.
Each user, in its own thread and HTTP connection, repeatedly: loads the login page, logs in,
loads its lists page and saves its black list (one validated commit). Prints p50/p99 of that
sequence and of the save alone, and checks that every save became a commit.
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from compiler.tools.passwd import make_password_hash  # noqa: E402
from tests.webinventory import make_web_inventory  # noqa: E402

PASSWORD = "bench-password-1"
PORT = 23590
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    """One user's HTTP connection with its session cookie."""

    def __init__(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        self.cookie = ""

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, str]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie" and value.startswith("mailcfg_session="):
                self.cookie = value.split(";", 1)[0]
        return response.status, text

    def csrf(self, path: str) -> str:
        status, page = self.request("GET", path)
        found = _CSRF.search(page)
        if status != 200 or not found:
            raise RuntimeError(f"GET {path}: {status}")
        return found.group(1)


def user_rounds(address: str, rounds: int, whole: list[float], saves: list[float]) -> None:
    for i in range(rounds):
        browser = Browser()
        start = time.perf_counter()
        token = browser.csrf("/login")
        status, _ = browser.request(
            "POST", "/login", {"address": address, "password": PASSWORD, "csrf": token}
        )
        if status != 302:
            raise RuntimeError(f"login of {address}: {status}")
        path = f"/account/{address}/lists"
        token = browser.csrf(path)
        form = {"csrf": token, "which": "blacklist", "enabled": "on", "entries": f"@r{i}.test"}
        saving = time.perf_counter()
        status, _ = browser.request("POST", path, form)
        if status != 302:
            raise RuntimeError(f"save of {address}: {status}")
        end = time.perf_counter()
        whole.append(end - start)
        saves.append(end - saving)
        browser.conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8, help="the server's --threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        web = make_web_inventory(Path(tmp))
        value = make_password_hash(PASSWORD)  # cost 12, as in production
        users = [f"user{i:02d}@example.com" for i in range(args.users)]
        domain_file = web.inventory / "domains" / "example.com.yml"
        text = domain_file.read_text().replace(
            "\nredirects:",
            "".join(f'  - name: {u.split("@")[0]}\n    password: "{value}"\n' for u in users)
            + "\nredirects:",
        )
        domain_file.write_text(text)
        web.git("commit", "-qam", "bench users")
        server = subprocess.Popen(
            [sys.executable, "-m", "compiler", "web", str(web.inventory), "--listen",
             f"127.0.0.1:{PORT}", "--secret-file", f"{tmp}/secret", "--cache", f"{tmp}/cache",
             "--threads", str(args.threads)],
            cwd=ROOT, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(150):
                try:
                    socket.create_connection(("127.0.0.1", PORT), 1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            head = web.git("rev-parse", "HEAD").strip()
            whole: list[float] = []
            saves: list[float] = []
            threads = [
                threading.Thread(target=user_rounds, args=(u, args.rounds, whole, saves))
                for u in users
            ]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            commits = int(web.git("rev-list", "--count", f"{head}..HEAD"))
        finally:
            server.terminate()
            server.wait(10)
    n = args.users * args.rounds
    print(
        "| users | rounds | server threads | login+change+commit p50 | p99 "
        "| save p50 | p99 | commits | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.users} | {args.rounds} | {args.threads} | {statistics.median(whole):.2f} s "
        f"| {percentile(whole, 0.99):.2f} s | {statistics.median(saves):.2f} s "
        f"| {percentile(saves, 0.99):.2f} s | {commits}/{n} | {wall:.1f} s |"
    )
    if commits != n or len(whole) != n:
        sys.exit("some changes were lost")


if __name__ == "__main__":
    main()
