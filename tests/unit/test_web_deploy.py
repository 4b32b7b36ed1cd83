"""`mailcfg web --apply`: a web commit is applied to the hosts serving its domain through the
apply path (here the example's local-transport hosts, directories below the inventory)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from compiler.build import BuildSession
from compiler.web.app import WebConfig, create_app
from compiler.web.changes import Actor, Changes
from compiler.web.deploy import apply_domain, hosts_serving
from compiler.web.gitstore import GitInventory, Person
from compiler.web.passcheck import verify_password
from schemas.web import WebSettings
from tests.webinventory import make_web_inventory


def _users_line(root: Path, address: str) -> str:
    users = (root / "etc" / "dovecot" / "users").read_text()
    return next(line for line in users.splitlines() if line.startswith(address + ":"))


def test_a_commit_is_applied_to_the_hosts_serving_its_domain(tmp_path: Path) -> None:
    web = make_web_inventory(tmp_path)
    cache = tmp_path / "cache"
    assert hosts_serving(BuildSession.open(web.inventory, cache_dir=cache), "example.org") == [
        "mx1"
    ]
    apply_domain(web.inventory, "example.com", cache)  # both hosts at the committed state
    store = GitInventory(web.inventory, Person("mailcfg web", "web@localhost"))
    changes = Changes(store, lambda domain: apply_domain(web.inventory, domain, cache))

    committed = changes.change_password(
        Actor("bob@example.org"), "bob@example.org", "applied-pw-1", "applied-pw-1"
    )
    assert "mx1  changed" in committed.deployed and "mx2" not in committed.deployed
    line = _users_line(web.inventory / ".mailcfg" / "hosts" / "mx1", "bob@example.org")
    assert verify_password("applied-pw-1", line.split(":")[1])

    committed = changes.change_account(
        Actor("alice@example.com"), "bob@example.com", {"quota": "1G"}
    )
    assert "mx1  changed" in committed.deployed and "mx2  changed" in committed.deployed
    assert web.git("status", "--porcelain") == ""


def test_the_app_applies_when_asked(tmp_path: Path) -> None:
    web = make_web_inventory(tmp_path)
    config = WebConfig(
        inventory=web.inventory,
        secret_file=tmp_path / "s" / "secret",
        apply=True,
        cache_dir=tmp_path / "c",
    )
    changes = create_app(config).extensions["mailcfg"].changes
    committed = changes.change_sender_list(
        Actor("orders@example.org"), "orders@example.org", "blacklist", True, ["@spam.test"]
    )
    assert "recap:" in committed.deployed and "failed=0" in committed.deployed


def test_push_to_a_branch_for_review(tmp_path: Path) -> None:
    web = make_web_inventory(tmp_path)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    config = WebConfig(
        inventory=web.inventory, secret_file=tmp_path / "s" / "secret", push=(str(remote), "web")
    )
    changes = create_app(config).extensions["mailcfg"].changes
    committed = changes.change_sender_list(
        Actor("carol@example.com"), "carol@example.com", "blacklist", True, ["@spam.test"]
    )
    assert committed.deployed == f"pushed to {remote} web for review"
    pushed = subprocess.run(
        ["git", "-C", str(remote), "log", "-1", "--format=%H %ae", "web"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert pushed == [committed.commit, "carol@example.com"]
    # The review branch moved there: the next push is refused, the commit stays.
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", "-b", "web", str(remote), str(other)], check=True)
    subprocess.run(
        ["git", "-C", str(other), "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q",
         "--allow-empty", "-m", "reviewer"], check=True,
    )  # fmt: skip
    subprocess.run(["git", "-C", str(other), "push", "-q", "origin", "web"], check=True)
    committed = changes.change_sender_list(
        Actor("carol@example.com"), "carol@example.com", "blacklist", False, []
    )
    assert committed.deployed.startswith(f"committed, but not pushed to {remote} web:")
    assert web.git("log", "-1", "--format=%H").strip() == committed.commit


def test_the_inventory_says_what_follows_a_commit(tmp_path: Path) -> None:
    web = make_web_inventory(tmp_path)
    remote = tmp_path / "review.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    web.git("remote", "add", "review", str(remote))
    main_file = web.inventory / "mailcfg.yml"
    main_file.write_text(
        main_file.read_text()
        + "\nweb:\n  after_commit: push\n  push_remote: review\n  push_branch: web/changes\n"
    )
    web.git("commit", "-qam", "server team: web changes go to review")
    config = WebConfig(inventory=web.inventory, secret_file=tmp_path / "s" / "secret")
    changes = create_app(config).extensions["mailcfg"].changes
    committed = changes.change_sender_list(
        Actor("carol@example.com"), "carol@example.com", "blacklist", True, ["@spam.test"]
    )
    assert committed.deployed == "pushed to review web/changes for review"
    tip = subprocess.run(
        ["git", "-C", str(remote), "rev-parse", "web/changes"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert tip == committed.commit


@pytest.mark.parametrize(
    ("web", "message"),
    [
        (
            {
                "after_commit": "push",
                "push_remote": "https://evil.example/x.git",
                "push_branch": "w",
            },
            "remote's name",
        ),
        (
            {"after_commit": "push", "push_remote": "--upload-pack=x", "push_branch": "w"},
            "remote's name",
        ),
        ({"after_commit": "push", "push_branch": "../../x"}, "branch name"),
        ({"after_commit": "push", "push_branch": "-f"}, "branch name"),
        ({"after_commit": "push"}, "needs push_branch"),
        ({"after_commit": "deploy"}, "after_commit"),
    ],
)
def test_web_settings_refuse_urls_options_and_bad_branches(
    web: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        WebSettings.model_validate(web)
