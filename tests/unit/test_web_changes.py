"""Web changes as git commits: the access rule where the change is made, validation by the
loader, the layout kept, the person as author, no secret in a message, and concurrency."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.web.changes import AccessDenied, Actor, Changes
from compiler.web.gitstore import CommitRefused, Edited, GitInventory, Person
from compiler.web.passcheck import verify_password
from compiler.web.yamledit import EditError, load_document
from tests.webinventory import WebInventory, make_web_inventory

CAROL = Actor("carol@example.com")
ALICE = Actor("alice@example.com")  # admin of example.com
BOB_ORG = Actor("bob@example.org")  # admin of example.org


@pytest.fixture
def web(tmp_path: Path) -> WebInventory:
    return make_web_inventory(tmp_path)


@pytest.fixture
def changes(web: WebInventory) -> Changes:
    return Changes(GitInventory(web.inventory, Person("mailcfg web", "web@localhost")))


def _head(web: WebInventory) -> str:
    return web.git("rev-parse", "HEAD").strip()


def _account(web: WebInventory, domain: str, name: str) -> dict[str, object]:
    doc = load_document(web.domain_text(domain))
    return next(dict(a) for a in doc["accounts"] if a["name"] == name)


def test_a_change_is_one_commit_of_one_file_by_the_person(
    web: WebInventory, changes: Changes, capsys: pytest.CaptureFixture[str]
) -> None:
    before = web.domain_text("example.com")
    changes.change_autoresponder(
        CAROL,
        "carol@example.com",
        enabled=True,
        subject="Away",
        body="Back on Monday.",
        only_whitelisted=True,
        start=dt.date(2026, 12, 1),
        end=dt.date(2026, 12, 24),
    )
    assert web.git("log", "-1", "--format=%an <%ae>|%cn|%s").strip() == (
        "carol@example.com <carol@example.com>|mailcfg web|web: carol@example.com: autoresponder on"
    )
    assert web.git("show", "--name-only", "--format=", "HEAD").split() == [
        "inventory/domains/example.com.yml"
    ]
    diff = web.git("diff", "HEAD~1", "HEAD", "--unified=0")
    removed = [line for line in diff.splitlines() if line.startswith("-") and "---" not in line]
    assert removed == []  # comments and layout of everything else kept
    assert web.git("status", "--porcelain") == ""  # the working copy is the commit
    after = web.domain_text("example.com")
    assert after.startswith(before.split("  - name: carol")[0])
    assert "subject: Away" in after and "start: 2026-12-01" in after
    assert main(["validate", str(web.inventory)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_a_password_change_stores_a_modern_hash_and_no_secret_in_git_messages(
    web: WebInventory, changes: Changes
) -> None:
    changes.change_password(CAROL, "carol@example.com", "new-secret-99", "new-secret-99")
    stored = str(_account(web, "example.com", "carol")["password"])
    assert stored.startswith("{BLF-CRYPT}$2b$12$") and verify_password("new-secret-99", stored)
    log = web.git("log", "--format=%B")
    assert "new-secret-99" not in log and "$2b$" not in log and "password changed" in log


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [("short", "short", "at least 8"), ("long-enough-1", "long-enough-2", "differ")],
)
def test_a_bad_new_password_is_refused(
    web: WebInventory, changes: Changes, first: str, second: str, message: str
) -> None:
    head = _head(web)
    with pytest.raises(ValueError, match=message):
        changes.change_password(CAROL, "carol@example.com", first, second)
    assert _head(web) == head


def test_a_user_cannot_touch_another_account(web: WebInventory, changes: Changes) -> None:
    head, text = _head(web), web.domain_text("example.com")
    with pytest.raises(AccessDenied):
        changes.change_password(CAROL, "bob@example.com", "taken-over-1", "taken-over-1")
    with pytest.raises(AccessDenied):
        changes.change_sender_list(CAROL, "alice@example.com", "whitelist", False, [])
    with pytest.raises(AccessDenied):
        changes.add_account(CAROL, "carol2@example.com", "password-123", {})
    with pytest.raises(AccessDenied):  # even their own account's domain-level settings
        changes.change_account(CAROL, "carol@example.com", {"quota": 0})
    assert _head(web) == head and web.domain_text("example.com") == text


def test_a_domain_admin_manages_their_domain_only(web: WebInventory, changes: Changes) -> None:
    changes.add_account(
        ALICE, "dan@example.com", "dan-password-1", {"quota": "1G", "imap": True, "pop3": False}
    )
    changes.change_account(ALICE, "bob@example.com", {"enabled": False})
    changes.change_password(ALICE, "carol@example.com", "reset-by-admin", "reset-by-admin")
    changes.set_domain_redirect(ALICE, "help@example.com", ["alice@example.com"])
    changes.delete_account(ALICE, "dan@example.com")
    assert _account(web, "example.com", "bob")["enabled"] is False
    head = _head(web)
    for attempt in (
        lambda: changes.add_account(ALICE, "eve@example.org", "eve-password-1", {}),
        lambda: changes.change_password(ALICE, "orders@example.org", "taken-1234", "taken-1234"),
        lambda: changes.delete_account(ALICE, "orders@example.org"),
        lambda: changes.add_account(BOB_ORG, "eve@example.com", "eve-password-1", {}),
    ):
        with pytest.raises(AccessDenied):
            attempt()
    assert _head(web) == head
    changes.add_account(BOB_ORG, "eve@example.org", "eve-password-1", {})
    server = Actor("postmaster@example.com", server_admin=True)
    changes.change_account(server, "eve@example.org", {"quota": "2G"})


def test_an_invalid_change_is_refused_with_the_loaders_message(
    web: WebInventory, changes: Changes
) -> None:
    head, text = _head(web), web.domain_text("example.com")
    with pytest.raises(CommitRefused) as refused:
        changes.change_sender_list(
            CAROL, "carol@example.com", "whitelist", True, ["not an address"]
        )
    assert "inventory/domains/example.com.yml:" in str(refused.value)
    assert "whitelist" in str(refused.value)
    with pytest.raises(CommitRefused, match="end date is before"):
        changes.change_autoresponder(
            CAROL,
            "carol@example.com",
            enabled=True,
            subject="x",
            body="y",
            only_whitelisted=True,
            start=dt.date(2026, 2, 1),
            end=dt.date(2026, 1, 1),
        )
    with pytest.raises(EditError):
        changes.change_redirect(CAROL, "carol@example.com", "forward", ["nobody"])
    assert _head(web) == head and web.domain_text("example.com") == text
    assert web.git("status", "--porcelain") == ""


def test_a_moved_head_is_retried_on_the_new_head(web: WebInventory, changes: Changes) -> None:
    """Someone commits in between: the edit runs again on the new HEAD; both changes land."""
    store = changes.store
    path = "domains/example.org.yml"
    calls = []

    def edit(text: str) -> Edited:
        calls.append(text)
        if len(calls) == 1:  # a server admin commits while the web edit is under way
            other = web.inventory / path
            other.write_text(other.read_text().replace("quota: 5G", "quota: 6G"))
            web.git("commit", "-q", "-am", "server team: more quota")
        return Edited(text.replace("imap: true", "imap: false"), "web: test edit")

    store.commit_edit(path, edit, Person("bob@example.org", "bob@example.org"))
    assert len(calls) == 2
    text = web.domain_text("example.org")
    assert "quota: 6G" in text and "imap: false" in text
    assert web.git("log", "--format=%s", "-2").split("\n")[:2] == [
        "web: test edit",
        "server team: more quota",
    ]


def test_uncommitted_changes_in_the_working_copy_are_not_overwritten(
    web: WebInventory, changes: Changes
) -> None:
    file = web.inventory / "domains" / "example.com.yml"
    file.write_text(file.read_text() + "# a local edit\n")
    with pytest.raises(CommitRefused, match="uncommitted changes"):
        changes.change_sender_list(CAROL, "carol@example.com", "blacklist", True, ["@spam.test"])
    assert file.read_text().endswith("# a local edit\n")


def test_concurrent_changes_all_land(web: WebInventory, changes: Changes) -> None:
    head = _head(web)
    errors: list[BaseException] = []
    # A second store on the same checkout (another app process) shares the file lock.
    other = Changes(GitInventory(web.inventory, Person("mailcfg web", "web@localhost")))

    def run(i: int) -> None:
        try:
            maker = changes if i % 2 else other
            who = Actor(["alice", "bob", "carol", "postmaster"][i % 4] + "@example.com")
            maker.change_sender_list(who, who.address, "blacklist", True, [f"@spam{i}.test"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(web.git("rev-list", f"{head}..HEAD").split()) == 8
    assert web.git("status", "--porcelain") == ""
    subprocess.run(["git", "-C", str(web.repo), "fsck", "--no-progress"], check=True)


def test_a_domain_admin_renames_an_account_and_its_redirect(
    web: WebInventory, changes: Changes
) -> None:
    changes.rename_account(ALICE, "carol@example.com", "caroline@example.com")
    text = web.domain_text("example.com")
    assert "  - name: caroline\n" in text and "  - name: caroline                 # on an" in text
    assert web.git("log", "-1", "--format=%s").strip() == (
        "web: carol@example.com: account renamed to caroline@example.com"
    )
    head = _head(web)
    with pytest.raises(EditError, match="exists already"):
        changes.rename_account(ALICE, "caroline@example.com", "bob@example.com")
    with pytest.raises(AccessDenied):
        changes.rename_account(ALICE, "caroline@example.com", "caroline@example.org")
    with pytest.raises(AccessDenied):
        changes.rename_account(CAROL, "bob@example.com", "robert@example.com")
    assert _head(web) == head
