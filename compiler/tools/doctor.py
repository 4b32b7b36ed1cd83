"""`mailcfg doctor`: the live DNS (and each host's port 25) checked against the records
`tools.dnsrecords` says the inventory needs. One `Check` per thing checked, ok / warn / fail,
each failure with the fix to apply.

Per domain: MX names every host that serves it; SPF is one record ending in `-all` or `~all`
that passes for every address of every sending host (evaluated by pyspf, through the agent's
own `runtime.policy.spf`); DKIM keys as the hosts hold them (when known), each by its place
in a rotation (`tools.dkimrotation`); DMARC present and parseable (RFC 7489 6.4); the MTA-STS
id current; TLS-RPT present. Per host: A/AAAA of its
mail name, the PTR of each address names the HELO name and is forward-confirmed, no address
listed on the DNS blacklists of its policy, and port 25 offers STARTTLS with a certificate
valid for the mail name.

A wrong or missing record is a `fail`, and so is a question the DNS server does not answer
(nothing was verified); a record that works but differs from the inventory is a `warn`.
Nothing here writes anything.
"""

from __future__ import annotations

import ipaddress
import json
import smtplib
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from compiler.tools.dkimrotation import dkim_verdict
from compiler.tools.dnsrecords import (
    DKIM_NOTE,
    DnsPlan,
    DnsRecord,
    DomainPlan,
    MailHost,
    zone_value,
)
from runtime.policy.dnsbl import parse_ranges, reverse_name
from runtime.policy.spf import evaluate_spf, make_sync_resolver


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    subject: str  # the domain or host checked
    check: str  # what: MX, SPF, DMARC, PTR 192.0.2.25, DNSBL zen.spamhaus.org, ...
    message: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "status": self.status.value,
            "subject": self.subject,
            "check": self.check,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class DoctorOptions:
    """`resolver`: the DNS server asked (`IP[:PORT]`; None: the system's). `smtp_address`
    and `smtp_port` send the port-25 check elsewhere than each host's public addresses and
    smtp listener (a tunnel, NAT, tests); `ca_file` adds trust anchors for it; `today` fixes
    the day (tests)."""

    resolver: str | None = None
    timeout: float = 5.0
    smtp: bool = True
    smtp_address: str | None = None
    smtp_port: int | None = None
    ca_file: str | None = None
    today: date | None = None  # the day DKIM retirements are counted from (None: today, UTC)


class DnsTrouble(Exception):
    """The DNS server did not answer (timeout, SERVFAIL): nothing can be said of the record."""


@dataclass(slots=True)
class _Dns:
    resolver: dns.resolver.Resolver

    def rrs(self, name: str, rtype: str) -> list[Any]:
        """The answers (none for NXDOMAIN or no data); `DnsTrouble` when there is no answer."""
        try:
            answer = self.resolver.resolve(name, rtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTrouble(f"no answer for {name} {rtype} ({exc.__class__.__name__})") from exc
        return list(answer.rrset or ())

    def texts(self, name: str) -> list[str]:
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in self.rrs(name, "TXT")]


Found = list[Check]
OK, WARN, FAIL = Status.OK, Status.WARN, Status.FAIL


@dataclass(frozen=True, slots=True)
class _Say:
    """Makes the checks of one subject and one kind: `say(FAIL, "no MX record", fix)`."""

    subject: str
    what: str

    def __call__(self, status: Status, message: str, fix: str = "") -> Found:
        return [Check(status, self.subject, self.what, message, fix)]


def _publish(records: Iterable[DnsRecord]) -> str:
    lines = [f"{r.name} {r.ttl} IN {r.type} {zone_value(r)}" for r in records]
    return "publish " + " and ".join(lines) if lines else ""


def _expected(domain: DomainPlan, name: str, rtype: str = "TXT") -> str:
    """The fix that publishes the plan's records of `name`."""
    return _publish(r for r in domain.records if r.name == f"{name}." and r.type == rtype)


# --- the domains ------------------------------------------------------------------------------


def check_mx(dns_: _Dns, domain: DomainPlan) -> Found:
    say = _Say(domain.domain, "MX")
    if not domain.hosts:
        return []
    want = {f"{h.hostname}." for h in domain.hosts}
    found = {rr.exchange.to_text().lower() for rr in dns_.rrs(domain.domain, "MX")}
    missing = sorted(want - found)
    if missing:
        fix = _publish(r for r in domain.records if r.type == "MX" and r.value[3:] in missing)
        return say(FAIL, f"MX does not name {', '.join(missing)}" if found else "no MX", fix)
    if found - want:
        extra = ", ".join(sorted(found - want))
        return say(
            WARN,
            f"MX also names {extra}, which the inventory does not know",
            "remove those MX records unless they pass mail on to these hosts",
        )
    return say(OK, ", ".join(sorted(want)))


def _spf_all(record: str) -> str | None:
    """The qualifier of the record's `all` term (`+` when none is written), or None."""
    for term in record.split()[1:]:
        if term.lstrip("+-~?").lower() == "all":
            return term[0] if term[0] in "+-~?" else "+"
    return None


def check_spf(dns_: _Dns, domain: DomainPlan, spf_all: str) -> Found:
    say, fix = _Say(domain.domain, "SPF"), _expected(domain, domain.domain)
    records = [t for t in dns_.texts(domain.domain) if t.lower().split(" ")[0] == "v=spf1"]
    if not records:
        return say(FAIL, "no SPF record", fix)
    if len(records) > 1:
        return say(
            FAIL, f"{len(records)} SPF records (receivers see a permerror)", "keep one: " + fix
        )
    record, qualifier = records[0], _spf_all(records[0])
    redirected = any(t.lower().startswith("redirect=") for t in record.split())
    if qualifier in ("+", "?"):
        found = say(FAIL, f"{record!r} ends in {qualifier}all: anyone may send as the domain", fix)
    elif qualifier is None and not redirected:
        found = say(WARN, f"{record!r} has no -all or ~all (others are neutral)", fix)
    elif qualifier == "~" and spf_all == "-all":
        found = say(WARN, f"{record!r} ends in ~all, the inventory says -all", fix)
    else:
        found = say(OK, record)
    return found + [c for h in domain.hosts for c in _spf_covers(dns_, domain, h, fix)]


def _spf_covers(dns_: _Dns, domain: DomainPlan, host: MailHost, fix: str) -> Found:
    """SPF passes for each address of `host` sending as the domain (pyspf, as a receiver)."""
    say = _Say(domain.domain, f"SPF {host.name}")
    if not host.addresses:
        return say(
            WARN,
            "no public_addresses in the inventory: not checked",
            "add public_addresses to the host",
        )
    found: Found = []
    for address in host.addresses:
        sender = f"postmaster@{domain.domain}"
        got = evaluate_spf(dns_.resolver, address, sender, host.hostname, "mailcfg-doctor")
        if got.result == "pass":
            found += say(OK, f"{address} passes")
        elif got.result == "temperror":
            found += say(WARN, f"{address}: temperror ({got.explanation})")
        else:
            found += say(FAIL, f"{address} is not covered: {got.result}", fix)
    return found


_DMARC_POLICIES = ("none", "quarantine", "reject")


def parse_dmarc(record: str) -> dict[str, str]:
    """The tags of a DMARC record (RFC 7489 6.4: `v=DMARC1` first, `p=` a policy, each tag
    once); ValueError naming what is wrong."""
    tags: dict[str, str] = {}
    parts = [p.strip() for p in record.split(";")]
    for part in parts[:-1] if parts[-1] == "" else parts:
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not key.isalnum() or not value:
            raise ValueError(f"{part!r} is not a tag=value pair")
        if key in tags:
            raise ValueError(f"tag {key} appears twice")
        tags[key] = value
    if next(iter(tags), None) != "v" or tags["v"] != "DMARC1":
        raise ValueError("it does not start with v=DMARC1")
    if tags.get("p") not in _DMARC_POLICIES:
        raise ValueError("p= is missing or not none, quarantine or reject")
    if tags.get("sp", "none") not in _DMARC_POLICIES:
        raise ValueError("sp= is not none, quarantine or reject")
    return tags


def check_dmarc(dns_: _Dns, domain: DomainPlan) -> Found:
    name = f"_dmarc.{domain.domain}"
    say, fix = _Say(domain.domain, "DMARC"), _expected(domain, name)
    records = [t for t in dns_.texts(name) if t.lower().startswith("v=dmarc1")]
    if len(records) != 1:
        many = f"{len(records)} DMARC records (receivers ignore them all)"
        return say(FAIL, many if records else "no DMARC record", fix)
    try:
        tags = parse_dmarc(records[0])
    except ValueError as exc:
        return say(FAIL, f"unparseable: {records[0]!r}: {exc}", fix)
    want = domain.dmarc
    if tags["p"] != want.policy.value:
        return say(WARN, f"p={tags['p']}, the inventory says p={want.policy.value}", fix)
    if want.rua is not None and f"mailto:{want.rua}" not in tags.get("rua", "").split(","):
        return say(WARN, f"aggregate reports do not go to {want.rua}", fix)
    return say(OK, "; ".join(f"{k}={v}" for k, v in tags.items()))


def _dkim_key(text: str) -> str:
    for part in text.split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip() == "p":
            return "".join(value.split())
    return ""


def check_dkim(dns_: _Dns, domain: DomainPlan, today: date) -> Found:
    """Each key of each signing host, by its place in a rotation (`tools.dkimrotation`)."""
    if not domain.dkim:
        return _Say(domain.domain, "DKIM")(WARN, DKIM_NOTE.removeprefix("DKIM: "))
    found: Found = []
    for key in domain.dkim:
        say = _Say(domain.domain, f"DKIM {key.selector}")
        fix = _expected(domain, key.record_name.rstrip("."))
        published = [_dkim_key(t) for t in dns_.texts(key.record_name)]
        status, message, fix = dkim_verdict(key, published, fix, today)
        found += say(Status(status), message, fix)
    return found


def check_mta_sts(dns_: _Dns, domain: DomainPlan) -> Found:
    if domain.mta_sts_id is None:
        return []
    name = f"_mta-sts.{domain.domain}"
    say = _Say(domain.domain, "MTA-STS")
    fix = f"{_expected(domain, name)} and serve the policy file (`mailcfg dns --mta-sts-policy`)"
    records = [t for t in dns_.texts(name) if t.startswith("v=STSv1")]
    if not records:
        return say(FAIL, "no _mta-sts record", fix)
    ids = [v.strip()[3:] for t in records for v in t.split(";") if v.strip().startswith("id=")]
    if ids == [domain.mta_sts_id]:
        return say(OK, f"id={domain.mta_sts_id}")
    stale = ", ".join(ids) or "(none)"
    return say(FAIL, f"stale id {stale}, the policy's is {domain.mta_sts_id}", fix)


def check_tls_rpt(dns_: _Dns, domain: DomainPlan) -> Found:
    if domain.tls_rpt is None:
        return []
    name, say = f"_smtp._tls.{domain.domain}", _Say(domain.domain, "TLS-RPT")
    records = [t for t in dns_.texts(name) if t.startswith("v=TLSRPTv1")]
    if len(records) == 1:
        return say(OK, records[0])
    many = f"{len(records)} TLS-RPT records"
    return say(FAIL, many if records else "no TLS-RPT record", _expected(domain, name))


# --- the hosts --------------------------------------------------------------------------------


def _forward(dns_: _Dns, hostname: str) -> set[str]:
    return {rr.address for t in ("A", "AAAA") for rr in dns_.rrs(hostname, t)}


def check_addresses(dns_: _Dns, host: MailHost, records: Sequence[DnsRecord]) -> Found:
    say = _Say(host.name, "A/AAAA")
    if not host.addresses:
        return say(
            WARN,
            f"no public_addresses in the inventory: {host.hostname} not checked",
            "add public_addresses to the host",
        )
    found, want = _forward(dns_, host.hostname), set(host.addresses)
    if want - found:
        missing = [r for r in records if r.name == f"{host.hostname}." and r.value in want - found]
        gone = ", ".join(sorted(want - found))
        return say(FAIL, f"{host.hostname} does not resolve to {gone}", _publish(missing))
    if found - want:
        extra = ", ".join(sorted(found - want))
        return say(
            WARN,
            f"{host.hostname} also resolves to {extra}",
            "add them to public_addresses, or remove those records",
        )
    return say(OK, f"{host.hostname} -> {', '.join(sorted(want))}")


def check_ptr(dns_: _Dns, host: MailHost, address: str) -> Found:
    """The PTR of `address` is the host's HELO name, which resolves back to `address`."""
    say = _Say(host.name, f"PTR {address}")
    fix = f"ask the provider of {address} to set its PTR to {host.hostname}"
    reverse = dns.reversename.from_address(address).to_text()
    names = sorted(rr.target.to_text().rstrip(".").lower() for rr in dns_.rrs(reverse, "PTR"))
    if names != [host.hostname]:
        found = f"names {', '.join(names)}, not" if names else "missing; it must name"
        return say(FAIL, f"{found} the HELO name {host.hostname}", fix)
    if address not in _forward(dns_, host.hostname):
        rtype = "AAAA" if ":" in address else "A"
        return say(
            FAIL,
            f"{host.hostname} does not resolve back to {address}",
            f"publish {host.hostname}. IN {rtype} {address}",
        )
    return say(OK, f"{host.hostname}, forward-confirmed")


def check_dnsbl(
    dns_: _Dns, host: MailHost, address: str, zone: str, listed: Sequence[str]
) -> Found:
    say = _Say(host.name, f"DNSBL {zone} {address}")
    answers = [rr.address for rr in dns_.rrs(f"{reverse_name(address)}.{zone}", "A")]
    if not answers:
        return say(OK, "not listed")
    ranges = parse_ranges(listed)
    hits = [
        a for a in answers if any(lo <= int(ipaddress.IPv4Address(a)) <= hi for lo, hi in ranges)
    ]
    if hits:
        return say(
            FAIL,
            f"listed ({', '.join(hits)})",
            f"find the reason on {zone}'s site, fix it, then ask to be delisted",
        )
    return say(
        WARN,
        f"answered {', '.join(answers)}: no listing (an error or quota code; the "
        "list may refuse this resolver)",
    )


def check_smtp(host: MailHost, address: str, options: DoctorOptions) -> Found:
    """Port 25 answers, offers STARTTLS, and its certificate is valid for the mail name."""
    port = options.smtp_port or host.smtp_port
    say = _Say(host.name, f"SMTP {address}:{port}")
    context = ssl.create_default_context(cafile=options.ca_file)
    try:
        with smtplib.SMTP(timeout=options.timeout, local_hostname="doctor.mailcfg.invalid") as smtp:
            smtp.connect(address, port)
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                return say(FAIL, "no STARTTLS offered", "check the host's Postfix TLS settings")
            code, _ = smtp.docmd("STARTTLS")
            if code != 220:
                return say(FAIL, f"STARTTLS refused ({code})", "check the host's Postfix TLS")
            # smtplib's starttls() checks the name it connected to (an address here): wrap the
            # socket here to check the mail name, as a sending MTA does.
            assert smtp.sock is not None  # connected above
            smtp.sock = context.wrap_socket(smtp.sock, server_hostname=host.hostname)
            smtp.file, smtp.ehlo_resp, smtp.esmtp_features = None, None, {}
            smtp.ehlo()
    except ssl.SSLCertVerificationError as exc:
        return say(
            FAIL,
            f"certificate not valid for {host.hostname}: {exc.verify_message}",
            f"set policy.tls.acme (or tls.cert and tls.key) for {host.hostname}",
        )
    except (OSError, smtplib.SMTPException) as exc:
        return say(
            FAIL,
            f"no SMTP with STARTTLS: {exc}",
            f"open port {port} to the internet and check that Postfix runs",
        )
    return say(OK, f"STARTTLS, certificate valid for {host.hostname}")


# --- the run ----------------------------------------------------------------------------------


def _guarded(subject: str, what: str, run: Callable[..., Found], *args: Any) -> Found:
    """`run(*args)`'s checks, or one failure when the DNS server did not answer: nothing was
    verified, and CI must not pass on that."""
    try:
        return run(*args)
    except DnsTrouble as exc:
        return _Say(subject, what)(
            FAIL, f"could not check: {exc}", "run again, or ask another resolver (--resolver)"
        )


def run_doctor(plan: DnsPlan, options: DoctorOptions = DoctorOptions()) -> list[Check]:
    """Every check of the plan's domains, then of its hosts."""
    dns_ = _Dns(make_sync_resolver([options.resolver] if options.resolver else [], options.timeout))
    today = options.today or datetime.now(UTC).date()
    found: Found = []
    for domain in plan.domains:
        d = domain.domain
        found += _guarded(d, "MX", check_mx, dns_, domain)
        found += _guarded(d, "SPF", check_spf, dns_, domain, plan.spf_all)
        found += _guarded(d, "DKIM", check_dkim, dns_, domain, today)
        found += _guarded(d, "DMARC", check_dmarc, dns_, domain)
        found += _guarded(d, "MTA-STS", check_mta_sts, dns_, domain)
        found += _guarded(d, "TLS-RPT", check_tls_rpt, dns_, domain)
    for host in plan.hosts:
        found += _guarded(host.name, "A/AAAA", check_addresses, dns_, host, plan.host_records)
        for address in host.addresses:
            found += _guarded(host.name, f"PTR {address}", check_ptr, dns_, host, address)
            for zone, listed in host.dnsbl:
                what = f"DNSBL {zone} {address}"
                found += _guarded(host.name, what, check_dnsbl, dns_, host, address, zone, listed)
        smtp_at = options.smtp_address or next(iter(host.addresses), None)
        if options.smtp and host.mail and smtp_at is not None:
            found += check_smtp(host, smtp_at, options)
    return found


def doctor_exit_code(checks: Sequence[Check]) -> int:
    """1 when a check failed; warnings alone pass."""
    return 1 if any(c.status is FAIL for c in checks) else 0


def count_checks(checks: Sequence[Check]) -> dict[str, int]:
    return {s.value: sum(c.status is s for c in checks) for s in Status}


def format_checks(checks: Sequence[Check]) -> str:
    """One line per check: status, subject, what, the finding and the fix; then the counts."""
    width = max((len(c.subject) for c in checks), default=0)
    lines = []
    for c in checks:
        fix = f"; fix: {c.fix}" if c.fix and c.status is not OK else ""
        lines.append(f"{c.status.value:<4}  {c.subject:<{width}}  {c.check}: {c.message}{fix}")
    counts = count_checks(checks)
    lines.append(f"doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(lines) + "\n"


def format_checks_json(checks: Sequence[Check], errors: Sequence[dict[str, Any]] = ()) -> str:
    """One JSON document: the checks, their counts and the run's errors."""
    doc = {"checks": [c.as_json() for c in checks], "counts": count_checks(checks)}
    return json.dumps({**doc, "errors": list(errors)}, indent=2) + "\n"
