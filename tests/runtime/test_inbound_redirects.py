"""Inbound checks for every local recipient: accounts, redirects, chains, loops, unknown.

`CASES` is the table: recipient, sender, client → expected action and the counters written
for each account; every case runs through the real policy server (unix socket, SQLite
store) against one config, with SPF and DNSBL answered by a DNS server on loopback. Then the
expansion itself (runtime.policy.recipients) against a plain reachability walk on random
redirect graphs, and its bound on hostile ones.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime.policy.engine import Policy
from runtime.policy.recipients import MAX_LISTED, index_recipients
from tests.runtime.dnsserver import Zone, dns_server
from tests.runtime.policy_fixtures import inbound, make_config
from tests.runtime.test_server import Harness, run_with_server

DNS_PORT = 22071
FILTER = "REJECT 5.7.1 Sender rejected by the input filter"
WHITE = "Ask carol to add you to her whitelist"

ZONE = Zone(
    {
        "strict.test": [("TXT", "v=spf1 ip4:192.0.2.10 -all")],
        "nospf.test": [("A", "192.0.2.99")],
        "66.2.0.192.bl.test": [("A", "127.0.0.2", 60)],
    }
)


def account(black: list[str] | None = None, white: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"limits": {}}
    if black is not None:
        out["blacklist"] = {"enabled": True, "entries": black}
    if white is not None:
        out["whitelist"] = {"enabled": True, "entries": white}
    return out


ACCOUNTS = {
    "alice@example.com": account(),
    "bob@example.com": account(black=["spam@bad.org", "@evil.net"]),
    "carol@example.com": account(white=["friend@ok.org"]),
    "dave@example.org": account(black=["@dave-hates.net"]),
    # Accounts with a redirect of their own: erin forwards everything, fay keeps a copy.
    "erin@example.com": account(black=["@erin-hates.net"]),
    "fay@example.com": account(black=["@fay-hates.net"]),
    "postmaster@example.com": account(black=["@pm-hates.net"]),
}

REDIRECTS = {
    "info@example.com": ["bob@example.com"],
    "sales@example.com": ["alice@example.com", "buyer@partner.net"],
    "team@example.com": ["alice@example.com", "carol@example.com"],
    "both@example.com": ["carol@example.com", "bob@example.com"],
    "ext@example.com": ["someone@partner.net"],
    "hop1@example.com": ["hop2@example.org"],  # two hops, across local domains
    "hop2@example.org": ["dave@example.org"],
    "loop1@example.com": ["loop2@example.com"],  # a loop Postfix never delivers
    "loop2@example.com": ["loop1@example.com", "bob@example.com"],
    "erin@example.com": ["alice@example.com"],
    "fay@example.com": ["fay@example.com", "bob@example.com"],
    "abuse@example.org": ["fay@example.com"],
}


def config(nameserver: str) -> Any:
    return make_config(
        local_domains=["example.com", "example.org"],
        accounts=ACCOUNTS,
        redirects=REDIRECTS,
        # postmaster@example.org is the implicit alias to the host's postmaster.
        postmaster="postmaster@example.com",
        spam={
            "spf": True,
            "custom_dnsbl": [{"zone": "bl.test"}],
            "nameservers": [nameserver],
            "dns_timeout": 1,
        },
    )


BL = "rejected", "blacklist_blocked"


@dataclass(frozen=True)
class Case:
    id: str
    rcpt: str
    sender: str
    action: str  # exact, or a prefix when it ends with "…"
    counted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    client: str = "127.0.0.1"


def black(rcpt: str) -> str:
    return f"REJECT 5.7.1 <{rcpt}>: sender is on the recipient's blacklist"


CASES = [
    # A redirect to one account: that account's lists, the reply names the redirect.
    Case("info-blacklisted", "info@example.com", "spam@bad.org", black("info@example.com"),
         {"bob@example.com": BL}),
    Case("info-case", "INFO@Example.COM", "x@EVIL.net", black("info@example.com"),
         {"bob@example.com": BL}),
    Case("info-ok", "info@example.com", "friend@ok.org", "DUNNO"),
    Case("info-filter", "info@example.com", "big.casino@x.org", FILTER,
         {"bob@example.com": ("rejected",)}),
    # Filter rejects count for the first account in the targets; never for an outsider.
    Case("sales-filter", "sales@example.com", "promo7@x.org", FILTER,
         {"alice@example.com": ("rejected",)}),
    Case("ext-filter-counts-nobody", "ext@example.com", "casino@x.org", FILTER),
    Case("ext-ok", "ext@example.com", "spam@bad.org", "DUNNO"),
    # Several targets: any account's list refusing refuses the redirect (fail closed).
    Case("team-whitelist", "team@example.com", "stranger@x.org",
         f"REJECT 5.7.1 <team@example.com>: {WHITE}", {"carol@example.com": ("rejected",)}),
    Case("team-whitelisted", "team@example.com", "friend@ok.org", "DUNNO"),
    # Every blacklist before any whitelist, as for one account.
    Case("both-blacklist-first", "both@example.com", "spam@bad.org", black("both@example.com"),
         {"bob@example.com": BL}),
    # A chain across local domains.
    Case("hop1", "hop1@example.com", "x@dave-hates.net", black("hop1@example.com"),
         {"dave@example.org": BL}),
    Case("hop2", "hop2@example.org", "x@dave-hates.net", black("hop2@example.org"),
         {"dave@example.org": BL}),
    Case("loop", "loop1@example.com", "spam@bad.org", black("loop1@example.com"),
         {"bob@example.com": BL}),
    # An account with a redirect: its own lists still apply, and its targets'.
    Case("erin-own-list", "erin@example.com", "x@erin-hates.net", black("erin@example.com"),
         {"erin@example.com": BL}),
    Case("erin-target-has-none", "erin@example.com", "spam@bad.org", "DUNNO"),
    Case("erin-filter-counts-erin", "erin@example.com", "casino@x.org", FILTER,
         {"erin@example.com": ("rejected",)}),
    Case("fay-own-list", "fay@example.com", "x@fay-hates.net", black("fay@example.com"),
         {"fay@example.com": BL}),
    Case("fay-copy-and-bob", "fay@example.com", "spam@bad.org", black("fay@example.com"),
         {"bob@example.com": BL}),
    Case("abuse-via-fay", "abuse@example.org", "spam@bad.org", black("abuse@example.org"),
         {"bob@example.com": BL}),
    Case("abuse-fay-list", "abuse@example.org", "x@fay-hates.net", black("abuse@example.org"),
         {"fay@example.com": BL}),
    # The postmaster alias the compiler adds for a domain without one.
    Case("postmaster-alias", "postmaster@example.org", "x@pm-hates.net",
         black("postmaster@example.org"), {"postmaster@example.com": BL}),
    # Accounts addressed directly, as before.
    Case("bob-direct", "bob@example.com", "spam@bad.org", black("bob@example.com"),
         {"bob@example.com": BL}),
    Case("alice-ok", "alice@example.com", "spam@bad.org", "DUNNO"),
    # An address of a local domain the config does not know: the filter still applies.
    Case("unknown-local-filter", "zed@example.com", "casino@x.org", FILTER),
    Case("unknown-local-ok", "zed@example.com", "spam@bad.org", "DUNNO"),
    Case("not-local", "x@elsewhere.net", "casino@x.org", "DUNNO"),
    # SPF and DNSBL for redirects, counted like the filter.
    Case("info-spf-fail", "info@example.com", "a@strict.test", "REJECT 5.7.23 SPF fail…",
         {"bob@example.com": ("rejected", "spf_blocked")}, client="192.0.2.11"),
    Case("ext-spf-fail", "ext@example.com", "a@strict.test", "REJECT 5.7.23 SPF fail…",
         client="192.0.2.11"),
    Case("sales-dnsbl", "sales@example.com", "x@nospf.test",
         "REJECT 5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.test",
         {"alice@example.com": BL}, client="192.0.2.66"),
    Case("hop1-spf-pass", "hop1@example.com", "a@strict.test", "DUNNO", client="192.0.2.10"),
]  # fmt: skip


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    with dns_server(ZONE, DNS_PORT) as ns:
        yield ns


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_inbound_check_of_a_local_recipient(tmp_path: Path, nameserver: str, case: Case) -> None:
    got: list[str] = []

    async def t(h: Harness) -> None:
        c = await h.client()
        got.extend(await c.ask(inbound(case.rcpt, case.sender, client=case.client)))
        await c.close()

    h = run_with_server(tmp_path, t, config(nameserver))
    action = got[0]
    if case.action.endswith("…"):
        assert action.startswith(case.action[:-1])
    else:
        assert action == case.action
    # A reply never names an account the address as sent does not name.
    for account in ACCOUNTS:
        assert account == case.rcpt.lower() or account not in action.lower()
    counted = {
        r.account: {k for k, v in r.counters.items() if v}
        for r in h.store.stats()
        if any(r.counters.values())
    }
    assert counted == {a: set(c) for a, c in case.counted.items()}
    # Counted once: one refused recipient is one reject.
    assert all(v <= 1 for r in h.store.stats() for v in r.counters.values())


def test_whitelist_notice_names_the_redirect(nameserver: str) -> None:
    cfg = config(nameserver).model_copy(update={"whitelist_notice": True})
    p = Policy(cfg)
    req = inbound("Team@example.com", "stranger@x.org", client="192.0.2.10")
    verdict = p.check_lists(req, "team@example.com")
    assert verdict is not None and verdict.notice and verdict.account == "carol@example.com"
    job = p.notice_job(req, verdict, 0.0)
    assert job is not None and job.recipient == "team@example.com"


# -- the expansion ------------------------------------------------------------------------


def reachable_listed(start: str, redirects: dict[str, list[str]], listed: set[str]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for t in redirects.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen & listed


@pytest.mark.parametrize("seed", range(40))
def test_expansion_matches_a_plain_walk(seed: int) -> None:
    rnd = random.Random(seed)
    names = [f"n{i}@example.com" for i in range(rnd.randint(1, 30))]
    accounts: dict[str, Any] = {}
    for name in rnd.sample(names, rnd.randint(0, len(names))):
        accounts[name] = {
            "limits": {},
            "blacklist": {"enabled": rnd.random() < 0.5, "entries": ["x@bad.org"]},
            "whitelist": {"enabled": rnd.random() < 0.2, "entries": ["x@good.org"]},
        }
    redirects: dict[str, list[str]] = {}
    for name in rnd.sample(names, rnd.randint(0, len(names))):
        redirects[name] = rnd.sample([*names, "out@partner.net"], rnd.randint(1, 4))
    cfg = make_config(accounts=accounts, redirects=redirects, postmaster="pm@partner.net")
    table = index_recipients(cfg)
    listed = {
        a for a, acc in cfg.accounts.items() if acc.blacklist.enabled or acc.whitelist.enabled
    }
    for address, local in table.items():
        want = reachable_listed(address, redirects, listed)
        got = {lst.account for lst in (*local.blacklists, *local.whitelists)}
        assert got == want, address
        if address in accounts:
            assert local.account == address
        elif local.account is not None:
            assert local.account in accounts
            assert local.account in reachable_listed(address, redirects, set(accounts))
        else:
            assert not reachable_listed(address, redirects, set(accounts))
    # Every account and redirect is in the table, and the domain's postmaster alias.
    assert table.keys() == set(accounts) | set(redirects) | {"postmaster@example.com"}


def test_first_account_follows_the_declared_order() -> None:
    cfg = make_config(
        accounts={"zed@example.com": {"limits": {}}, "amy@example.com": {"limits": {}}},
        redirects={
            "a@example.com": ["out@partner.net", "b@example.com", "amy@example.com"],
            "b@example.com": ["zed@example.com"],
        },
    )
    table = index_recipients(cfg)
    assert table["a@example.com"].account == "zed@example.com"  # depth first, as declared
    assert table["b@example.com"].account == "zed@example.com"


def test_long_chain_loads_fast_and_is_bounded() -> None:
    # Forwarding accounts in a chain, every one with a blacklist: quadratic if every address
    # kept its own copy of all it reaches; bounded instead, and deferred beyond the bound.
    n = 3 * MAX_LISTED
    names = [f"u{i}@example.com" for i in range(n)]
    lst = {"enabled": True, "entries": ["x@bad.org"]}
    accounts = {a: {"limits": {}, "blacklist": lst} for a in names}
    redirects = {a: [b] for a, b in itertools.pairwise(names)}
    cfg = make_config(accounts=accounts, redirects=redirects, global_filter=["casino"])
    start = time.process_time()
    table = index_recipients(cfg)
    assert time.process_time() - start < 5  # generous: a quadratic walk takes minutes
    head, tail = table[names[0]], table[names[-MAX_LISTED]]
    assert head.too_wide and not tail.too_wide and len(tail.blacklists) == MAX_LISTED
    p = Policy(cfg)
    v = p.check_lists(inbound(names[0], "ok@x.org"), names[0])
    assert v is not None and v.action.startswith("DEFER_IF_PERMIT 4.7.1 <u0@example.com>: ")
    v = p.check_lists(inbound(names[-2], "x@bad.org"), names[-2])
    assert v is not None and v.action == black(names[-2])
    assert v.account == names[-2]  # the addressed account's own list comes first
    # The global filter comes first, even for an address that reaches too many lists.
    v = p.check_lists(inbound(names[0], "casino@x.org"), names[0])
    assert v is not None and v.action == FILTER and v.account == names[0]
