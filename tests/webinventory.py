"""A git working copy of the example inventory for the web app's tests: the inventory below
the repository's top level (as in this project), every account with a known password, and
address admins added (alice administers example.com, dave@example.org example.org)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt

EXAMPLE = Path(__file__).resolve().parents[1] / "inventory"
PASSWORD = "old-password-1"  # every account's password in the copy
SECOND_HASH_PASSWORD = "bob-org-password"


@dataclass(frozen=True)
class WebInventory:
    repo: Path
    inventory: Path

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.repo), *args], capture_output=True, text=True, check=True
        ).stdout

    def domain_text(self, domain: str) -> str:
        return (self.inventory / "domains" / f"{domain}.yml").read_text()


def cheap_hash(password: str) -> str:
    """A BLF-CRYPT hash at the lowest cost (tests only: fast to check)."""
    return "{BLF-CRYPT}" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def make_web_inventory(tmp: Path) -> WebInventory:
    repo = tmp / "repo"
    inventory = repo / "inventory"
    shutil.copytree(EXAMPLE, inventory)
    known = cheap_hash(PASSWORD)
    for domain_file in (inventory / "domains").glob("*.yml"):
        text = re.sub(
            r'password: "\{[A-Z0-9-]+\}[^"]*"', f'password: "{known}"', domain_file.read_text()
        )
        text = text.replace(
            'admins: ["@alice", "@mail-team"]', 'admins: ["@alice", "alice@example.com"]'
        )
        text = text.replace('admins: ["@dave"]', 'admins: ["@dave", "bob@example.org"]')
        domain_file.write_text(text)
    (repo / ".gitignore").write_text(".mailcfg/\n")  # local hosts' roots, as in this project
    web = WebInventory(repo, inventory)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    web.git("config", "user.name", "Server Team")
    web.git("config", "user.email", "team@example.com")
    web.git("add", "-A")
    web.git("commit", "-q", "-m", "inventory")
    return web
