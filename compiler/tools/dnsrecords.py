"""The DNS records the served domains and the hosts need (`mailcfg dns`), from the validated
inventory alone: no network, no clock.

Per served domain (alias domains too, with the hosts of their target): MX (the hosts with the
postfix role that serve it, preference 10 each), SPF, DMARC (and the report authorisation
record RFC 7489 7.1 asks of a report domain of the inventory), MTA-STS and TLS-RPT when
`dns:` asks for them, DKIM for each known signing key, RFC 6186 SRV records for mail clients
(`0 0 0 .` for a service no host offers) and `autoconfig`/`autodiscover` CNAMEs to the first
host (mailcow's form). Per host: A/AAAA of its mail name (`hostname`, also its HELO name) for
each public address, and the PTR record of each address, which must name the HELO name.

Names are absolute (a trailing dot), so a zone line fits any `$ORIGIN`. A record's `value` is
its presentation form, except TXT, whose `value` is the text itself: `quote_txt` makes the
zone form (quoted, escaped, split into strings of at most 255 bytes).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

import dns.reversename

from schemas.dns import (
    Dmarc,
    MtaSts,
    SpfAll,
    TlsRpt,
    domain_dmarc,
    domain_mta_sts,
    is_example_address,
)
from schemas.inventory import Inventory, Role
from schemas.policy import Dnsbl, Listener, ServerPolicy

MX_PREFERENCE = 10
TXT_CHUNK = 255  # RFC 1035 3.3: a character-string is at most 255 bytes
MTA_STS_ID_LENGTH = 20  # RFC 8461 3.1: 1 to 32 letters and digits
DKIM_NOTE = "DKIM: no signing keys yet; enable `dkim` (rspamd role)"
# RFC 6186 (and RFC 8314 for submissions): service label → the listener that offers it,
# the role that runs it, and its SRV priority (implicit TLS first, RFC 8314 3).
CLIENT_SERVICES: tuple[tuple[str, str, Role, int], ...] = (
    ("_submissions._tcp", "smtps", Role.POSTFIX, 0),
    ("_submission._tcp", "submission", Role.POSTFIX, 10),
    ("_imaps._tcp", "imaps", Role.DOVECOT, 0),
    ("_imap._tcp", "imap", Role.DOVECOT, 10),
    ("_pop3s._tcp", "pop3s", Role.DOVECOT, 0),
    ("_pop3._tcp", "pop3", Role.DOVECOT, 10),
)


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One record: `zone` is the served domain (or the mail name's parent) whose zone holds
    it; None for a PTR record (the address's provider publishes it)."""

    name: str
    type: str
    value: str
    ttl: int
    zone: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type,
            "ttl": self.ttl,
            "value": self.value,
            "zone": self.zone,
        }


DkimState = Literal["signing", "next", "retired"]


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A signing key's public half, as the host reports it (`p=`: base64 of the key), and its
    place in a rotation: the current key (`signing`), the next one (`next`: signs too once
    published), or a `retired` one (since `retired`, its record kept `keep_days` after)."""

    domain: str
    selector: str
    public_key: str
    algorithm: Literal["rsa", "ed25519"] = "rsa"
    state: DkimState = "signing"
    retired: date | None = None
    keep_days: int = 7
    prefix: str = ""  # the inventory's selector, without the host's part
    current: str = ""  # the inventory's current selector (what a `next` key replaces)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}."

    @property
    def record_text(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key}"


@dataclass(frozen=True, slots=True)
class MailHost:
    """What the DNS needs of one host: its mail (HELO) name, public addresses, whether it
    receives and sends mail (postfix role), the client services it offers and the DNS
    blacklists its policy names (zone, answers that mean "listed")."""

    name: str
    hostname: str
    addresses: tuple[str, ...]
    mail: bool
    services: tuple[tuple[str, int], ...]  # (SRV label, port) of each client service offered
    dnsbl: tuple[tuple[str, tuple[str, ...]], ...]
    smtp_port: int


@dataclass(frozen=True, slots=True)
class DomainPlan:
    """One served domain: its hosts and settings (what `doctor` checks) and its records."""

    domain: str
    alias_of: str | None
    hosts: tuple[MailHost, ...]
    spf: str
    dmarc: Dmarc
    mta_sts: MtaSts | None
    mta_sts_policy: str | None
    mta_sts_id: str | None
    tls_rpt: TlsRpt | None
    dkim: tuple[DkimKey, ...]
    records: tuple[DnsRecord, ...]


@dataclass(frozen=True, slots=True)
class DnsPlan:
    domains: tuple[DomainPlan, ...]
    hosts: tuple[MailHost, ...]  # the selected hosts (their A/AAAA and PTR records)
    host_records: tuple[DnsRecord, ...]
    spf_all: SpfAll
    notes: tuple[str, ...] = field(default=())

    @property
    def records(self) -> tuple[DnsRecord, ...]:
        return (*(r for d in self.domains for r in d.records), *self.host_records)


# --- the hosts ----------------------------------------------------------------------------------


def _offers(listener: Listener) -> bool:
    """Whether clients outside can reach `listener` (not off, not on a loopback address)."""
    if not listener.enabled:
        return False
    try:
        return not ipaddress.ip_address(listener.address).is_loopback
    except ValueError:
        return listener.address != "localhost"


def make_mail_host(inventory: Inventory, name: str, policy: ServerPolicy) -> MailHost:
    spec = inventory.hosts[name]
    roles = set(spec.roles)
    listeners = [
        (label, getattr(policy.listeners, key), role) for label, key, role, _ in CLIENT_SERVICES
    ]
    services = tuple(
        (label, listener.port)
        for label, listener, role in listeners
        if role in roles and _offers(listener)
    )
    # A known list counts the schema's default answers as listings, as the agent does.
    lists = [*(Dnsbl(zone=str(z)) for z in policy.spam.dnsbl), *policy.spam.custom_dnsbl]
    zones = tuple((z.zone, tuple(z.listed)) for z in lists)
    return MailHost(
        name=name,
        hostname=spec.hostname,
        addresses=tuple(spec.public_addresses),
        mail=Role.POSTFIX in roles,
        services=services,
        dnsbl=zones,
        smtp_port=policy.listeners.smtp.port,
    )


def _served_names(inventory: Inventory, host: str) -> set[str]:
    wanted = inventory.hosts[host].domains
    names = set(inventory.domains) if wanted == "all" else set(wanted) & set(inventory.domains)
    return names | {a for a, target in inventory.alias_domains.items() if target in names}


# --- TXT and zone text --------------------------------------------------------------------------


def quote_txt(text: str) -> str:
    """TXT content in zone form: strings of at most 255 bytes, each quoted, `"` and `\\`
    escaped, any byte outside printable ASCII as `\\DDD` (so no value can end a line)."""
    data = text.encode()
    chunks = [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)] or [b""]
    return " ".join(f'"{_escape(chunk)}"' for chunk in chunks)


def _escape(chunk: bytes) -> str:
    out = []
    for byte in chunk:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def zone_value(record: DnsRecord) -> str:
    return quote_txt(record.value) if record.type == "TXT" else record.value


def _zone_of(name: str, domains: Iterable[str]) -> str:
    """The served domain that holds `name` (the longest suffix), else `name`'s parent."""
    bare = name.rstrip(".")
    holders = [d for d in domains if bare == d or bare.endswith("." + d)]
    return max(holders, key=len) if holders else bare.partition(".")[2]


# --- the records --------------------------------------------------------------------------------


def make_spf(hosts: Sequence[MailHost], networks: Iterable[str], spf_all: SpfAll) -> str:
    """`v=spf1` with every sending host's address (or `mx` when one has none known) and the
    outside networks allowed to send as the domain (`external_senders`), then `spf_all`."""
    terms: list[str] = []
    if any(not h.addresses for h in hosts):
        terms.append("mx")
    known = [a for h in hosts for a in h.addresses] if not terms else []
    for item in [*known, *networks]:
        net = ipaddress.ip_network(item, strict=False)
        single = net.num_addresses == 1
        text = str(net.network_address) if single else str(net)
        term = f"ip{net.version}:{text}"
        if term not in terms:
            terms.append(term)
    return " ".join(["v=spf1", *terms, spf_all])


def make_dmarc(dmarc: Dmarc) -> str:
    tags = [f"v=DMARC1; p={dmarc.policy}"]
    if dmarc.subdomain_policy is not None:
        tags.append(f"sp={dmarc.subdomain_policy}")
    if dmarc.rua is not None:
        tags.append(f"rua=mailto:{dmarc.rua}")
    return "; ".join(tags)


def make_mta_sts_policy(mta_sts: MtaSts, hosts: Sequence[MailHost]) -> str:
    """The `mta-sts.txt` policy file (RFC 8461 3.2: CRLF-separated `key: value` lines)."""
    lines = ["version: STSv1", f"mode: {mta_sts.mode}"]
    lines += [f"mx: {h.hostname}" for h in hosts]
    lines.append(f"max_age: {mta_sts.max_age}")
    return "".join(line + "\r\n" for line in lines)


def mta_sts_id(policy: str) -> str:
    """The `id=` of the `_mta-sts` record: it changes exactly when the policy file does."""
    return hashlib.sha256(policy.encode()).hexdigest()[:MTA_STS_ID_LENGTH]


def _domain_plan(
    domain: str,
    alias_of: str | None,
    hosts: tuple[MailHost, ...],
    inventory: Inventory,
    networks: Sequence[str],
    dkim: tuple[DkimKey, ...],
    notes: list[str],
) -> DomainPlan:
    settings = inventory.dns
    source = inventory.domains[alias_of or domain].dns
    dmarc, mta_sts = domain_dmarc(settings, source), domain_mta_sts(settings, source)
    ttl, fqdn = settings.ttl, f"{domain}."
    records: list[DnsRecord] = []

    def add(name: str, rtype: str, value: str, zone: str = domain) -> None:
        records.append(DnsRecord(name, rtype, value, ttl, zone))

    for host in hosts:
        add(fqdn, "MX", f"{MX_PREFERENCE} {host.hostname}.")
    if not hosts:
        notes.append(f"{domain}: no host with the postfix role serves it: no MX record")
    spf = make_spf(hosts, networks, settings.spf_all)
    add(fqdn, "TXT", spf)
    add(f"_dmarc.{domain}.", "TXT", make_dmarc(dmarc))
    if dmarc.rua is not None:
        auth = report_authorisation(domain, dmarc.rua)
        if auth is not None and auth[1] in _all_domains(inventory):
            add(auth[0], "TXT", "v=DMARC1", zone=auth[1])
        elif auth is not None:
            notes.append(
                f"{domain}: DMARC reports go to {dmarc.rua}: {auth[1]} must publish "
                f'{auth[0]} TXT "v=DMARC1" (RFC 7489 7.1) or receivers send none'
            )
    policy = policy_id = None
    if mta_sts is not None:
        policy = make_mta_sts_policy(mta_sts, hosts)
        policy_id = mta_sts_id(policy)
        add(f"_mta-sts.{domain}.", "TXT", f"v=STSv1; id={policy_id}")
    if settings.tls_rpt is not None:
        add(f"_smtp._tls.{domain}.", "TXT", f"v=TLSRPTv1; rua=mailto:{settings.tls_rpt.rua}")
    for key in dkim:
        add(key.record_name, "TXT", key.record_text)
    for label, _listener, _role, priority in CLIENT_SERVICES:
        offering = [(h, port) for h in hosts for offered, port in h.services if offered == label]
        for host, port in offering:
            add(f"{label}.{domain}.", "SRV", f"{priority} 1 {port} {host.hostname}.")
        if not offering:
            add(f"{label}.{domain}.", "SRV", "0 0 0 .")
    if hosts:
        add(f"autoconfig.{domain}.", "CNAME", f"{hosts[0].hostname}.")
        add(f"autodiscover.{domain}.", "CNAME", f"{hosts[0].hostname}.")
    return DomainPlan(
        domain=domain,
        alias_of=alias_of,
        hosts=hosts,
        spf=spf,
        dmarc=dmarc,
        mta_sts=mta_sts,
        mta_sts_policy=policy,
        mta_sts_id=policy_id,
        tls_rpt=settings.tls_rpt,
        dkim=dkim,
        records=tuple(records),
    )


def report_authorisation(domain: str, rua: str) -> tuple[str, str] | None:
    """The name at which the report domain of `rua` must authorise reports about `domain`
    (RFC 7489 7.1), and that report domain; None when `rua` is in `domain` or above it."""
    report_domain = rua.rpartition("@")[2]
    if domain == report_domain or domain.endswith("." + report_domain):
        return None
    return f"{domain}._report._dmarc.{report_domain}.", report_domain


def _all_domains(inventory: Inventory) -> set[str]:
    return set(inventory.domains) | set(inventory.alias_domains)


def _external_networks(
    policies: Mapping[str, ServerPolicy], hosts: Iterable[str], domain: str
) -> list[str]:
    """The outside networks allowed to send as `domain` (`external_senders`) on any of `hosts`."""
    found: list[str] = []
    for host in hosts:
        for entry in policies[host].external_senders:
            if entry.domain == domain:
                found += [n for n in entry.networks if n not in found]
    return found


def make_dns_plan(
    inventory: Inventory,
    policies: Mapping[str, ServerPolicy],
    selected: Sequence[str] = (),
    dkim_keys: Sequence[DkimKey] = (),
    dkim_notes: Sequence[str] | None = None,
) -> DnsPlan:
    """The records of the domains the `selected` hosts serve (every host when empty) and of
    those hosts. `policies` holds every host's resolved policy: a domain's MX, SPF and SRV
    records always name every host that serves it. `dkim_notes` say why a domain has no DKIM
    record when the hosts were asked for their keys (`compiler.push.dkimobserve`); None: they
    were not asked, and without keys one note says so."""
    every = sorted(inventory.hosts)
    chosen = sorted(set(selected)) if selected else every
    hosts = {name: make_mail_host(inventory, name, policies[name]) for name in every}
    served = {name: _served_names(inventory, name) for name in every}
    wanted = sorted({d for name in chosen for d in served[name]})
    notes: list[str] = []
    domains = []
    for domain in wanted:
        alias_of = inventory.alias_domains.get(domain)
        serving = tuple(hosts[n] for n in every if domain in served[n] and hosts[n].mail)
        networks = _external_networks(policies, (h.name for h in serving), alias_of or domain)
        keys = tuple(k for k in dkim_keys if k.domain == domain)
        domains.append(_domain_plan(domain, alias_of, serving, inventory, networks, keys, notes))
    if dkim_notes is not None:
        notes.extend(dkim_notes)
    elif not dkim_keys:
        notes.append(DKIM_NOTE)
    host_records = _host_records(
        [hosts[n] for n in chosen], _all_domains(inventory), inventory.dns.ttl, notes
    )
    return DnsPlan(
        domains=tuple(domains),
        hosts=tuple(hosts[n] for n in chosen),
        host_records=tuple(host_records),
        spf_all=inventory.dns.spf_all,
        notes=tuple(notes),
    )


def _host_records(
    hosts: Sequence[MailHost], domains: set[str], ttl: int, notes: list[str]
) -> list[DnsRecord]:
    """A/AAAA of each host's mail name, then the PTR record of each of its addresses."""
    records: list[DnsRecord] = []
    for host in hosts:
        name, zone = f"{host.hostname}.", _zone_of(host.hostname, domains)
        if not host.addresses:
            notes.append(
                f"{host.name}: no public_addresses in the inventory: no A/AAAA or PTR records "
                f"for {host.hostname}, and SPF names `mx`"
            )
        for address in host.addresses:
            rtype = "AAAA" if ":" in address else "A"
            records.append(DnsRecord(name, rtype, address, ttl, zone))
            if is_example_address(address):
                notes.append(
                    f"{host.name}: {address} is a documentation or test address; list the "
                    "host's real public address"
                )
    for host in hosts:
        for address in host.addresses:
            reverse = dns.reversename.from_address(address).to_text()
            records.append(DnsRecord(reverse, "PTR", f"{host.hostname}.", ttl, None))
    return records


# --- output -------------------------------------------------------------------------------------

ZONE_HEADER = (
    "; DNS records for the mail domains, from the inventory (`mailcfg dns`).\n"
    "; Names are absolute: paste each zone's lines into that zone.\n"
)


def format_zone(plan: DnsPlan) -> str:
    """RFC 1035 zone lines grouped by zone; PTR records last (the address's provider sets
    them); MTA-STS policy files and notes as comments."""
    out = [ZONE_HEADER]
    zones: dict[str | None, list[DnsRecord]] = {}
    for record in plan.records:
        zones.setdefault(record.zone, []).append(record)
    for zone in sorted(z for z in zones if z is not None):
        out.append(f"\n; zone {zone}.\n")
        out += [_zone_line(r) for r in zones[zone]]
    if None in zones:
        out.append("\n; reverse zones: ask each address's provider to set its PTR record\n")
        out += [_zone_line(r) for r in zones[None]]
    for domain in plan.domains:
        if domain.mta_sts_policy is not None:
            out.append(
                f"\n; MTA-STS policy of {domain.domain}: serve it (CRLF line ends) as\n"
                f";   https://mta-sts.{domain.domain}/.well-known/mta-sts.txt\n"
                f"; from a web server with a certificate for mta-sts.{domain.domain}\n"
            )
            out += [f";   {line}\n" for line in domain.mta_sts_policy.splitlines()]
    if plan.notes:
        out.append("\n")
        out += [f"; note: {note}\n" for note in plan.notes]
    return "".join(out)


def _zone_line(record: DnsRecord) -> str:
    return f"{record.name}\t{record.ttl}\tIN\t{record.type}\t{zone_value(record)}\n"


def format_json(plan: DnsPlan) -> str:
    """A JSON list of `{name, type, ttl, value}` (TXT values unquoted; see README)."""
    return json.dumps([r.as_json() for r in plan.records], indent=2) + "\n"


def mta_sts_policy_of(plan: DnsPlan, domain: str) -> str:
    """The `mta-sts.txt` file of `domain`; ValueError when it has none."""
    for entry in plan.domains:
        if entry.domain == domain and entry.mta_sts_policy is not None:
            return entry.mta_sts_policy
    raise ValueError(f"{domain}: no MTA-STS policy (not served, or `dns.mta_sts` is not set)")
