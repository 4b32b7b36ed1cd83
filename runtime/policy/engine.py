"""A loaded agent config compiled for decisions: which requests are inbound or outbound, and
the inbound checks run in the panel's order.

`Policy` is built once per config load (filter regexes compiled, limit windows per account,
resolvers) and is immutable afterwards apart from its DNS caches; a reload builds a new one.
Inbound = a RCPT request without `sasl_username` for a recipient of a local domain: an
account, a redirect (the accounts behind it are looked up in `recipients`, made once per load:
see runtime.policy.recipients for the rule), or an address the config does not know (the
global filter, SPF and DNSBL still apply). Outbound = an END-OF-MESSAGE request with
`sasl_username`; it counts `recipient_count` (or 1 per message).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.notify import NoticeJob, make_notice_job
from runtime.policy.checks import (
    DUNNO,
    Verdict,
    check_blacklists,
    check_dnsbl_listing,
    check_global_filter,
    check_spf_result,
    check_whitelists,
    compile_filter,
)
from runtime.policy.dnsbl import DnsblChecker, DnsblZone, make_resolver, parse_ranges
from runtime.policy.recipients import UNKNOWN, LocalRecipient, index_recipients
from runtime.policy.spf import SpfChecker, SpfResult, evaluate_spf
from runtime.state.limits import LimitRequest, LimitRule, limit_rule
from schemas.agent import AgentConfig

# What an A answer of a known list means as a listing; Spamhaus' 127.255.255.x error codes
# (open resolver, over quota) fall outside it.
_DEFAULT_LISTED = ("127.0.0.2-127.0.0.254",)


@dataclass(slots=True)
class MessageMemo:
    """Per connection: the SPF result of the message being checked (Postfix's `instance`), so
    a message to many local recipients is checked once and gets one Received-SPF header."""

    instance: str = ""
    spf: SpfResult | None = None
    prepended: bool = False


class Policy:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.local_domains = frozenset(config.local_domains)
        self.filter = compile_filter(config.global_filter, config.global_filter_reject_text)
        self.limits: Mapping[str, LimitRule] = {
            addr: limit_rule(acc.limits) for addr, acc in config.accounts.items()
        }
        self.recipients: Mapping[str, LocalRecipient] = index_recipients(config)
        self.default_limits = limit_rule(config.default_limits)
        spam = config.spam
        zones = [DnsblZone(z.value, parse_ranges(_DEFAULT_LISTED)) for z in spam.dnsbl]
        zones += [DnsblZone(z.zone, parse_ranges(z.listed)) for z in spam.custom_dnsbl]
        self.dnsbl = (
            DnsblChecker(zones, make_resolver(spam.nameservers, spam.dns_timeout))
            if zones
            else None
        )
        self.spf = (
            SpfChecker(spam.nameservers, spam.dns_timeout, config.hostname) if spam.spf else None
        )
        # Notices need the sender's SPF even when SPF checks of inbound mail are off.
        self.notice_spf = self.spf or (
            SpfChecker(spam.nameservers, spam.dns_timeout, config.hostname)
            if config.whitelist_notice
            else None
        )

    # -- classification -------------------------------------------------------------------

    def outbound_request(self, req: Mapping[str, str], now: float) -> LimitRequest | None:
        user = req.get("sasl_username", "")
        if not user or req.get("protocol_state", "").upper() != "END-OF-MESSAGE":
            return None
        account = user.lower()
        rule = self.limits.get(account, self.default_limits)
        try:
            recipients = int(req.get("recipient_count", "1"))
        except ValueError:
            recipients = 1
        return rule.request(account, recipients, now)

    def inbound_recipient(self, req: Mapping[str, str]) -> str | None:
        """The recipient of a local domain a RCPT request from outside is addressed to,
        lowercased (Postfix's lookups ignore case), if any."""
        if req.get("sasl_username") or req.get("protocol_state", "").upper() != "RCPT":
            return None
        rcpt = req.get("recipient", "").lower()
        if rcpt.rpartition("@")[2] not in self.local_domains:
            return None
        return rcpt

    # -- inbound checks -------------------------------------------------------------------

    def check_lists(self, req: Mapping[str, str], rcpt: str) -> Verdict | None:
        """The synchronous checks for the local recipient `rcpt` (see `inbound_recipient`):
        global filter, then the blacklists and whitelists of every account it reaches."""
        sender = req.get("sender", "")
        local = self.recipients.get(rcpt, UNKNOWN)
        verdict = check_global_filter(self.filter, sender, local.account)
        if verdict is not None:
            return verdict
        if local.too_wide:
            return Verdict(
                f"DEFER_IF_PERMIT 4.7.1 <{rcpt}>: recipient reaches too many accounts with "
                "sender lists; try again later"
            )
        return check_blacklists(local.blacklists, sender, rcpt) or check_whitelists(
            local.whitelists, sender, rcpt, self.config.whitelist_reject_text
        )

    def notice_job(self, req: Mapping[str, str], verdict: Verdict, now: float) -> NoticeJob | None:
        """The explanation mail a whitelist reject may earn (see runtime.notify)."""
        if not verdict.notice or self.notice_spf is None:
            return None
        # The address as sent: a notice never names the account behind a redirect.
        rcpt = self.inbound_recipient(req)
        return None if rcpt is None else make_notice_job(self.config, req, rcpt, now)

    def notice_spf_result(self, job: NoticeJob) -> str:
        """Blocking SPF check of a notice's sender (run in a worker thread). The whitelist
        comes before SPF in the panel's order, so this is evaluated only for notices."""
        checker = self.notice_spf
        if checker is None or not is_address(job.client):
            return "none"
        return evaluate_spf(
            checker.resolver, job.client, job.sender, job.helo, checker.receiver
        ).result

    def needs_dns(self, req: Mapping[str, str]) -> bool:
        return (self.spf is not None or self.dnsbl is not None) and is_remote(
            req.get("client_address", "")
        )

    async def check_dns(self, req: Mapping[str, str], rcpt: str, memo: MessageMemo) -> Verdict:
        """SPF, then DNS blacklists, for a client that is not on loopback; `rcpt` as for
        `check_lists`."""
        account = self.recipients.get(rcpt, UNKNOWN).account
        client = req.get("client_address", "")
        prepend: Verdict | None = None
        if self.spf is not None:
            instance = req.get("instance", "")
            if memo.spf is None or memo.instance != instance or not instance:
                memo.instance, memo.prepended = instance, False
                memo.spf = await self.spf.check(
                    client, req.get("sender", ""), req.get("helo_name", "")
                )
            res = memo.spf
            v = check_spf_result(res.result, res.explanation, res.header, account)
            if v is not None and not v.action.startswith("PREPEND"):
                return v
            if v is not None and not memo.prepended:
                prepend, memo.prepended = v, True
        if self.dnsbl is not None:
            zone = await self.dnsbl.listing_zone(client)
            v = check_dnsbl_listing(zone, client, account)
            if v is not None:
                return v
        return prepend or DUNNO


def is_address(client: str) -> bool:
    try:
        ipaddress.ip_address(client)
    except ValueError:
        return False
    return True


def is_remote(client: str) -> bool:
    """SPF and DNSBL make sense only for a real remote address (not loopback, not unknown)."""
    try:
        return not ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False
