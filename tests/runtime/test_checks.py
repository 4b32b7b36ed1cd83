"""Each policy check alone, then SPF and DNSBL through a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import re2

from runtime.policy.checks import (
    check_blacklist,
    check_global_filter,
    check_limit_result,
    check_spf_result,
    check_whitelist,
    compile_filter,
    sender_listed,
)
from runtime.policy.dnsbl import DnsblChecker, DnsblZone, make_resolver, parse_ranges, reverse_name
from runtime.policy.engine import MessageMemo, Policy, is_remote
from runtime.policy.spf import SpfChecker
from runtime.state.base import Window
from runtime.state.limits import LimitResult, limit_windows
from schemas.domain import SenderList
from schemas.policy import Limits, compile_filter_regex
from tests.runtime.dnsserver import Zone, dns_server
from tests.runtime.policy_fixtures import inbound, make_config, outbound

DNS_PORT = 22053

ZONE = Zone(
    {
        # SPF: pass only from 192.0.2.10; -all, ~all, ?all variants
        "strict.test": [("TXT", "v=spf1 ip4:192.0.2.10 -all")],
        "soft.test": [("TXT", "v=spf1 ip4:192.0.2.10 ~all")],
        "neutral.test": [("TXT", "v=spf1 ?all")],
        "nospf.test": [("A", "192.0.2.99")],
        "slow.test": [],
        # DNSBL: 192.0.2.66 listed on bl.test, 192.0.2.77 gets a Spamhaus-style error code
        "66.2.0.192.bl.test": [("A", "127.0.0.2", 60)],
        "77.2.0.192.bl.test": [("A", "127.255.255.254", 60)],
        "66.2.0.192.other.test": [("A", "127.0.0.4")],
        # IPv6 2001:db8::1 listed
        reverse_name("2001:db8::1") + ".bl.test": [("A", "127.0.0.3")],  # type: ignore[operator]
    },
    silent=["slow.test", "99.2.0.192.bl.test"],
)


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    with dns_server(ZONE, DNS_PORT) as ns:
        yield ns


# -- pure checks --------------------------------------------------------------------------


def test_global_filter_substring_is_case_insensitive() -> None:
    f = compile_filter(["Test.com"], "no")
    assert check_global_filter(f, "juan.lopez@masTEST.com", "a@x.org") is not None
    assert check_global_filter(f, "friend@example.org", "a@x.org") is None


def test_global_filter_regex_anchors() -> None:
    f = compile_filter([r"/^john@test\.com$/"], "Rejected by filter")
    v = check_global_filter(f, "John@test.com", "a@x.org")
    assert v is not None and v.action == "REJECT 5.7.1 Rejected by filter"
    assert v.counters == ("rejected",) and v.account == "a@x.org"
    assert check_global_filter(f, "j.john@test.com", "a@x.org") is None


def test_global_filter_regex_is_re2_and_linear() -> None:
    # What would backtrack for minutes in Python's re is one linear pass in RE2.
    f = compile_filter(["/(a+)+$/", "/^x(y+)+z$/"], "no")
    assert f.patterns and not f.substrings
    hostile = "a" * 100_000
    v = check_global_filter(f, hostile, "a@x.org")
    assert v is not None and v.action == "REJECT 5.7.1 no"
    assert check_global_filter(f, hostile + "!", "a@x.org") is None
    assert check_global_filter(f, "x" + "y" * 100_000 + "!", "a@x.org") is None


def test_global_filter_compiles_what_validation_compiled() -> None:
    # The same function as `mailcfg validate`: a pattern RE2 refuses never reaches the agent
    # as something else (Python's re would take this backreference).
    with pytest.raises(re2.error):
        compile_filter([r"/(a)\1/"], "no")
    assert compile_filter_regex("x").search("X") is not None  # case-insensitive, like ours


def test_global_filter_sender_not_utf8() -> None:
    # Bytes that are not UTF-8 arrive as surrogate escapes: matched, never an exception (an
    # exception would answer the fail-safe action, DUNNO by default).
    f = compile_filter(["/^spam.*@/", "casino"], "no")
    odd = b"spam\xff@x.org".decode("utf-8", "surrogateescape")
    v = check_global_filter(f, odd, None)
    assert v is not None and v.account is None
    assert check_global_filter(f, b"ok\xff@casino.org".decode("utf-8", "surrogateescape"), None)
    assert check_global_filter(f, b"ok\xff@x.org".decode("utf-8", "surrogateescape"), None) is None


@pytest.mark.parametrize(
    ("sender", "listed"),
    [
        ("SPAM@Bad.org", True),  # an address: exact, any case
        ("anyone@evil.net", True),  # `@domain`: exactly that domain
        ("anyone@sub.evil.net", False),
        ("other@bad.org", False),
        ("", False),  # the null sender matches nothing
    ],
)
def test_sender_listed(sender: str, listed: bool) -> None:
    assert sender_listed(["spam@bad.org", "@evil.net"], sender) is listed


def test_blacklist_only_when_enabled() -> None:
    lst = SenderList(enabled=True, entries=["@evil.net"])
    v = check_blacklist(lst, "x@evil.net", "b@example.com")
    assert v is not None and v.action.startswith("REJECT 5.7.1")
    assert v.counters == ("rejected", "blacklist_blocked")
    off = SenderList(enabled=False, entries=["@evil.net"])
    assert check_blacklist(off, "x@evil.net", "b@example.com") is None


def test_whitelist_rejects_others_with_explanation() -> None:
    lst = SenderList(enabled=True, entries=["friend@ok.org"])
    assert check_whitelist(lst, "friend@ok.org", "c@example.com", "ask") is None
    v = check_whitelist(lst, "stranger@ok.org", "c@example.com", "Ask carol to add you")
    assert v is not None and v.action == "REJECT 5.7.1 <c@example.com>: Ask carol to add you"
    assert check_whitelist(lst, "", "c@example.com", "x") is not None  # null sender too
    assert check_whitelist(SenderList(), "any@x.org", "c@example.com", "x") is None


# pyspf result → (action, or its start with "…"; counters), None: no opinion.
SPF_VERDICTS: list[tuple[str, tuple[str, tuple[str, ...]] | None]] = [
    ("fail", ("REJECT 5.7.23…", ("rejected", "spf_blocked"))),
    ("temperror", ("DEFER_IF_PERMIT 4.7.24…", ())),
    ("softfail", ("PREPEND Received-SPF: x", ())),
    ("neutral", ("PREPEND Received-SPF: x", ())),
    ("pass", None),
    ("none", None),
    ("permerror", None),
]


@pytest.mark.parametrize(("result", "expected"), SPF_VERDICTS, ids=[r for r, _ in SPF_VERDICTS])
def test_spf_result_mapping(result: str, expected: tuple[str, tuple[str, ...]] | None) -> None:
    v = check_spf_result(result, "not allowed", "Received-SPF: x", "a@x.org")
    if expected is None:
        assert v is None
        return
    action, counters = expected
    assert v is not None and v.counters == counters
    if action.endswith("…"):
        assert v.action.startswith(action[:-1])
    else:
        assert v.action == action


def test_limit_windows() -> None:
    assert limit_windows(Limits(per_hour=1, per_month=3)) == (
        Window("hour", 1),
        Window("month", 3),
    )


# LimitResult(allowed, locked, exceeded, newly_locked) → the action, or what it starts with and
# contains.
LIMIT_VERDICTS: list[tuple[LimitResult, str, str]] = [
    (LimitResult(True, False, None, False, {}), "DUNNO", "DUNNO"),
    (LimitResult(False, True, None, False, {}), "DEFER 4.7.1", "locked"),
    (
        LimitResult(False, False, "day", True, {}),
        "DEFER 4.7.1",
        "daily sending limit exceeded; account locked",
    ),
    (
        LimitResult(False, False, "hour", False, {}),
        "DEFER 4.7.1",
        "hourly sending limit exceeded; try again later",
    ),
]


@pytest.mark.parametrize(("result", "starts", "contains"), LIMIT_VERDICTS)
def test_limit_verdicts(result: LimitResult, starts: str, contains: str) -> None:
    action = check_limit_result(result, "a@x.org").action
    assert action.startswith(starts) and contains in action


def test_reverse_name() -> None:
    assert reverse_name("192.0.2.1") == "1.2.0.192"
    assert reverse_name("2001:db8::1") == ".".join("1" + "0" * 23 + "8bd01002")
    assert reverse_name("unknown") is None


def test_parse_ranges() -> None:
    assert parse_ranges(["127.0.0.2"]) == ((2130706434, 2130706434),)
    assert parse_ranges(["127.0.0.0/30"]) == ((2130706432, 2130706435),)
    with pytest.raises(ValueError, match="invalid DNSBL answer range"):
        parse_ranges(["127.0.0.300"])


def test_is_remote() -> None:
    assert is_remote("192.0.2.1") and is_remote("2001:db8::1")
    assert not is_remote("127.0.0.1") and not is_remote("::1") and not is_remote("unknown")


# -- engine classification ----------------------------------------------------------------


INBOUND_RECIPIENTS: list[tuple[dict[str, str], str | None]] = [
    (inbound("Alice@example.com", "x@y.org"), "alice@example.com"),
    # A redirect, and an address of a local domain the config does not know, are inbound too.
    (inbound("Sales@example.com", "x@y.org"), "sales@example.com"),
    (inbound("zed@example.com", "x@y.org"), "zed@example.com"),
    (inbound("x@elsewhere.org", "x@y.org"), None),
    ({**inbound("alice@example.com", "x"), "sasl_username": "u"}, None),
]


@pytest.mark.parametrize(("req", "rcpt"), INBOUND_RECIPIENTS)
def test_inbound_classification(req: dict[str, str], rcpt: str | None) -> None:
    assert Policy(make_config()).inbound_recipient(req) == rcpt


# Outbound request → (account, amount, lock, windows), None: not outbound.
OUTBOUND_REQUESTS: list[tuple[dict[str, str], tuple[str, int, bool, list[Window]] | None]] = [
    (
        outbound("Alice@example.com", 4),
        ("alice@example.com", 4, True, [Window("hour", 3), Window("day", 100)]),
    ),
    # carol counts messages
    (outbound("carol@example.com", 9), ("carol@example.com", 1, True, [Window("hour", 2)])),
    (outbound("bob@example.com"), ("bob@example.com", 1, False, [Window("hour", 5)])),
    # the default limits
    (outbound("zed@example.com"), ("zed@example.com", 1, True, [Window("hour", 10)])),
    ({**outbound("a@b.org"), "protocol_state": "RCPT"}, None),
]


@pytest.mark.parametrize(("req", "expected"), OUTBOUND_REQUESTS)
def test_outbound_classification(
    req: dict[str, str], expected: tuple[str, int, bool, list[Window]] | None
) -> None:
    got = Policy(make_config()).outbound_request(req, 0.0)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert (got.account, got.amount, got.lock, list(got.windows)) == expected


# carol: whitelist friend@ok.org and @family.net, blacklist @family.net. Sender → what the
# action contains, None: no verdict.
LIST_ORDER: list[tuple[str, str | None]] = [
    ("casino@family.net", "input filter"),  # the filter first
    ("mom@family.net", "blacklist"),  # blacklist before whitelist
    ("friend@ok.org", None),
    ("promo12@x.org", "input filter"),
]


@pytest.mark.parametrize(("sender", "contains"), LIST_ORDER)
def test_list_order_filter_then_blacklist_then_whitelist(sender: str, contains: str | None) -> None:
    p = Policy(make_config())
    v = p.check_lists(inbound("carol@example.com", sender), "carol@example.com")
    if contains is None:
        assert v is None
    else:
        assert v is not None and contains in v.action


# -- SPF and DNSBL against the loopback DNS server ----------------------------------------


def _spf(nameserver: str, client: str, sender: str) -> str:
    checker = SpfChecker([nameserver], 0.5, "mx1.example.com")
    return asyncio.run(checker.check(client, sender, "helo.test")).result


def test_spf_results(nameserver: str) -> None:
    assert _spf(nameserver, "192.0.2.10", "a@strict.test") == "pass"
    assert _spf(nameserver, "192.0.2.11", "a@strict.test") == "fail"
    assert _spf(nameserver, "192.0.2.11", "a@soft.test") == "softfail"
    assert _spf(nameserver, "192.0.2.11", "a@neutral.test") == "neutral"
    assert _spf(nameserver, "192.0.2.11", "a@nospf.test") == "none"
    assert _spf(nameserver, "192.0.2.11", "a@slow.test") == "temperror"


def test_spf_header_once_per_message(nameserver: str) -> None:
    cfg = make_config(spam={"spf": True, "nameservers": [nameserver], "dns_timeout": 0.5})
    p = Policy(cfg)
    memo = MessageMemo()

    async def run() -> list[str]:
        out = []
        for rcpt in ("alice@example.com", "bob@example.com"):
            req = inbound(rcpt, "a@soft.test", client="192.0.2.11", instance="9.1")
            out.append((await p.check_dns(req, rcpt, memo)).action)
        return out

    first, second = asyncio.run(run())
    assert first.lower().startswith("prepend received-spf: softfail")
    assert "client-ip=192.0.2.11" in first
    assert second == "DUNNO"
    fail = asyncio.run(
        p.check_dns(
            inbound("alice@example.com", "a@strict.test", client="192.0.2.5"),
            "alice@example.com",
            MessageMemo(),
        )
    )
    assert fail.action.startswith("REJECT 5.7.23") and fail.counters[-1] == "spf_blocked"


def _dnsbl(nameserver: str) -> DnsblChecker:
    zones = [
        DnsblZone("bl.test", parse_ranges(["127.0.0.2-127.0.0.254"])),
        DnsblZone("other.test", parse_ranges(["127.0.0.2"])),
    ]
    return DnsblChecker(zones, make_resolver([nameserver], 0.3))


def test_dnsbl_listing_and_error_codes(nameserver: str, caplog: pytest.LogCaptureFixture) -> None:
    checker = _dnsbl(nameserver)

    async def run() -> list[str | None]:
        return [
            await checker.listing_zone(ip)
            for ip in ("192.0.2.66", "192.0.2.77", "192.0.2.1", "2001:db8::1", "192.0.2.99")
        ]

    with caplog.at_level(logging.WARNING):
        got = asyncio.run(run())
    # .66 is on both; bl.test comes first. other.test answers 127.0.0.4: not in its range.
    assert got == ["bl.test", None, None, "bl.test", None]
    assert "127.255.255.254" in caplog.text and "not a listing" in caplog.text
    assert "failed (Timeout)" in caplog.text or "failed (LifetimeTimeout)" in caplog.text


def test_dnsbl_cache_honours_ttl(nameserver: str) -> None:
    checker = _dnsbl(nameserver)
    name = "66.2.0.192.bl.test."

    async def run() -> None:
        await checker.listing_zone("192.0.2.66")
        await checker.listing_zone("192.0.2.66")

    before = ZONE.queries.count((name, "A"))
    asyncio.run(run())
    assert ZONE.queries.count((name, "A")) == before + 1


def test_dnsbl_verdict_through_policy(nameserver: str) -> None:
    cfg = make_config(
        spam={"spf": False, "custom_dnsbl": [{"zone": "bl.test"}], "nameservers": [nameserver]}
    )
    p = Policy(cfg)
    req = inbound("alice@example.com", "x@y.org", client="192.0.2.66")
    assert p.needs_dns(req)
    v = asyncio.run(p.check_dns(req, "alice@example.com", MessageMemo()))
    assert v.action == (
        "REJECT 5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.test"
    )
    assert v.counters == ("rejected", "blacklist_blocked")
    assert not p.needs_dns(inbound("alice@example.com", "x@y.org", client="127.0.0.1"))
