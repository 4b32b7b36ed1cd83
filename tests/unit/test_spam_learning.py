"""`policy.bayes`: rspamd's Bayes per account or shared, and the Dovecot IMAPSieve scripts and
programs that teach it what users file as Junk — what is rendered for which host. The mail
flow itself (an IMAP move reaching rspamd's Redis) is in tests/e2e/test_rspamd_mailflow.py."""

from __future__ import annotations

import pytest

from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from compiler.types import FileTree
from schemas.domain import Domain
from schemas.inventory import HostSpec, Inventory, Role

ROLES = load_roles(default_roles_dir())
REDIS = "redis://127.0.0.1:6379/3"
LEARN = ("/etc/dovecot/learn/spam.sieve", "/etc/dovecot/learn/ham.sieve")
PROGRAMS = ("/etc/dovecot/learn-bin/mailcfg-learn-spam", "/etc/dovecot/learn-bin/mailcfg-learn-ham")


def render(
    policy: dict[str, object], roles: tuple[Role, ...] = (Role.POSTFIX, Role.DOVECOT)
) -> FileTree:
    spec = HostSpec(
        address="192.0.2.1", hostname="mx1.example.com", roles=list(roles), policy=policy
    )
    inv = Inventory(hosts={"mx1": spec}, domains={"example.com": Domain(domain="example.com")})
    return render_host(resolve_host(inv, "mx1", role_defaults(ROLES)), ROLES)


def text(tree: FileTree, path: str) -> str:
    found = tree.get(path)
    assert found is not None, path
    return found.content.decode()


def test_per_user_bayes_learning_from_junk() -> None:
    tree = render({"spam_actions": {}, "policy_state": REDIS, "bayes": {"per_user": True}})
    assert "per_user = true;" in text(tree, "/etc/rspamd/local.d/classifier-bayes.conf")
    conf = text(tree, "/etc/dovecot/dovecot.conf")
    assert "mail_plugins = $mail_plugins imap_quota imap_sieve\n" in conf
    assert "sieve_pipe_bin_dir = /etc/dovecot/learn-bin\n" in conf
    assert "imapsieve_mailbox1_before = file:/etc/dovecot/learn/spam.sieve;" in conf
    assert "imapsieve_mailbox2_from = Junk\n" in conf
    spam, ham = (text(tree, p) for p in LEARN)
    assert 'pipe :copy "mailcfg-learn-spam" ["${username}"];' in spam
    assert '"Trash"' in ham and 'pipe :copy "mailcfg-learn-ham"' in ham
    for path, kind in zip(PROGRAMS, ("spam", "ham"), strict=True):
        program = tree[path]
        assert program.mode == 0o755 and program.owner == "root"
        # The user name reaches rspamc as one quoted argument, never through a shell word.
        assert text(tree, path).endswith(
            f'exec /usr/bin/rspamc -h 127.0.0.1:11334 -t 10 -d "$1" learn_{kind}\n'
        )


def test_shared_bayes_learns_without_a_user() -> None:
    tree = render({"spam_actions": {}, "policy_state": REDIS, "bayes": {}})
    assert "per_user" not in text(tree, "/etc/rspamd/local.d/classifier-bayes.conf")
    assert text(tree, PROGRAMS[0]).endswith(
        "exec /usr/bin/rspamc -h 127.0.0.1:11334 -t 10 learn_spam\n"
    )


@pytest.mark.parametrize(
    ("policy", "roles"),
    [
        # No bayes key: autolearn only, Dovecot as before.
        ({"spam_actions": {}, "policy_state": REDIS}, (Role.POSTFIX, Role.DOVECOT)),
        (
            {"spam_actions": {}, "policy_state": REDIS, "bayes": {"learn_from_junk": False}},
            (Role.POSTFIX, Role.DOVECOT),
        ),
        # Dovecot without Postfix: no rspamd on this host to teach.
        ({"spam_actions": {}, "policy_state": REDIS, "bayes": {}}, (Role.DOVECOT,)),
    ],
)
def test_no_learning_scripts_unless_asked_and_useful(
    policy: dict[str, object], roles: tuple[Role, ...]
) -> None:
    tree = render(policy, roles)
    assert not any(p in tree for p in (*LEARN, *PROGRAMS))
    conf = text(tree, "/etc/dovecot/dovecot.conf")
    assert "imap_sieve" not in conf and "imapsieve" not in conf
