"""The agent's recipient index for the three redirect forms Postfix adds: an account that
forwards and keeps a copy, a domain's catch-all, and an alias domain. Each case runs the
engine's own inbound list check (`Policy.check_lists`) on a config as the compiler writes it;
the recipient rows are the ones `compiler.render.tables` renders for Postfix."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.policy.engine import Policy
from runtime.policy.recipients import index_recipients
from tests.runtime.policy_fixtures import inbound, make_config

BOB_BLOCKS = {"blacklist": {"enabled": True, "entries": ["@evil.net"]}, "limits": {}}
CAROL_BLOCKS = {"blacklist": {"enabled": True, "entries": ["@carol-hates.net"]}, "limits": {}}


def config(**overrides: Any) -> Any:
    data: dict[str, Any] = {
        "local_domains": ["example.com", "example.net", "example.org"],
        "accounts": {
            "alice@example.com": {"limits": {}},
            "bob@example.com": BOB_BLOCKS,
            "carol@example.org": CAROL_BLOCKS,
        },
        "redirects": {
            # Forward and keep a copy: alice's mailbox and an outside address.
            "alice@example.com": ["alice@example.com", "alice@gmail.example"],
            "sales@example.com": ["bob@example.com"],
        },
        "catch_alls": {"example.org": "bob@example.com"},
        "alias_domains": {"example.net": "example.com"},
    }
    return make_config(**{**data, **overrides})


def verdict(policy: Policy, rcpt: str, sender: str) -> str:
    found = policy.check_lists(inbound(rcpt, sender), rcpt)
    return found.action if found is not None else "DUNNO"


def black(rcpt: str) -> str:
    return f"REJECT 5.7.1 <{rcpt}>: sender is on the recipient's blacklist"


@pytest.mark.parametrize(
    ("rcpt", "sender", "action"),
    [
        # The copy kept in alice's own mailbox: her lists, no loop, no one else's.
        ("alice@example.com", "x@evil.net", "DUNNO"),
        # An unknown address of the catch-all domain reaches bob: bob's blacklist.
        ("whoever@example.org", "x@evil.net", black("whoever@example.org")),
        ("whoever@example.org", "x@fine.test", "DUNNO"),
        # An account of that domain is no catch-all mail: its own lists only.
        ("carol@example.org", "x@evil.net", "DUNNO"),
        ("carol@example.org", "x@carol-hates.net", black("carol@example.org")),
        # The alias domain: each name reaches the account (or redirect) of the same name.
        ("bob@example.net", "x@evil.net", black("bob@example.net")),
        ("sales@example.net", "x@evil.net", black("sales@example.net")),
        ("alice@example.net", "x@evil.net", "DUNNO"),
        # An unknown name of the alias domain is rejected by Postfix before it asks; the
        # catch-all of another domain does not reach it.
        ("whoever@example.net", "x@evil.net", "DUNNO"),
    ],
)
def test_lists_apply_to_every_form(rcpt: str, sender: str, action: str) -> None:
    assert verdict(Policy(config()), rcpt, sender) == action


def test_counts_go_to_the_account_behind_each_form() -> None:
    table = index_recipients(config())
    assert table.get("whoever@example.org") is table.get("@example.org")
    recipient = table.get("whoever@example.org")
    assert recipient is not None and recipient.account == "bob@example.com"
    assert table["bob@example.net"].account == "bob@example.com"
    assert table["alice@example.com"].account == "alice@example.com"
    assert table["postmaster@example.net"] is not None


def test_without_catch_alls_the_index_is_a_plain_dict() -> None:
    table = index_recipients(config(catch_alls={}))
    assert type(table) is dict
    assert table.get("whoever@example.org") is None
