"""What the DNS of the served domains should say: the hosts' public addresses, the SPF
qualifier, DMARC, MTA-STS and TLS-RPT, and the TTL of the records `mailcfg dns` prints.

`dns:` in `mailcfg.yml` sets them for every domain (the server team's); `dns:` in a domain
file overrides `dmarc` and `mta_sts` key by key for that domain (its admins' choice: how
receivers treat mail claiming to be from their domain). Every value lands in a TXT record or
a policy file: report addresses are plain addresses (no `!`, which DMARC reads as a size
limit), modes and policies are enumerations, numbers are bounded.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from schemas.common import ADDRESS_JSON, Frozen, check_address, json_string, show_value

# Networks no public mail name can point at: a receiver would connect to itself or to nobody.
_NEVER_PUBLIC = tuple(
    (ipaddress.ip_network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("224.0.0.0/3", "multicast or reserved"),
        ("::/127", "unspecified or loopback"),
        ("::ffff:0:0/96", "IPv4-mapped: list the IPv4 address"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)
# Documentation (RFC 5737, RFC 3849) and benchmarking (RFC 2544) networks: accepted, so that
# examples and test networks can be written, but `mailcfg dns` and `doctor` say that such an
# address cannot be the real one.
EXAMPLE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15", "2001:db8::/32")
)


def check_public_address(value: str) -> str:
    """A public IPv4 or IPv6 address of a host (what its mail name's A/AAAA record holds),
    in its compressed form; loopback, private, link-local and multicast ones are refused."""
    try:
        ip = ipaddress.ip_address(value) if value.isascii() and "%" not in value else None
    except ValueError:
        ip = None
    if ip is None:
        raise ValueError(f"{show_value(value)} is not an IPv4 or IPv6 address")
    for net, kind in _NEVER_PUBLIC:
        if ip.version == net.version and ip in net:
            raise ValueError(
                f"{value} is not a public address ({net}: {kind}); list the address the "
                "internet reaches the host at"
            )
    return str(ip)


def is_example_address(value: str) -> bool:
    """Whether `value` lies in a documentation or benchmarking network."""
    ip = ipaddress.ip_address(value)
    return any(ip.version == n.version and ip in n for n in EXAMPLE_NETWORKS)


def check_public_addresses(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("an address is listed twice")
    return value


def check_report_address(value: str) -> str:
    """A mailbox reports are sent to (`mailto:` in a DMARC or TLS-RPT record)."""
    value = check_address(value)
    if "!" in value:
        raise ValueError(f"{show_value(value)}: a report address has no '!' (DMARC's size mark)")
    return value


PublicAddress = Annotated[
    str,
    AfterValidator(check_public_address),
    json_string("[0-9A-Fa-f:.]+", 45),
]
PublicAddresses = Annotated[
    list[PublicAddress], AfterValidator(check_public_addresses), Field(max_length=16)
]
ReportAddress = Annotated[str, AfterValidator(check_report_address), ADDRESS_JSON]


class DmarcPolicy(StrEnum):
    NONE = "none"  # monitor only: reports, no effect on delivery
    QUARANTINE = "quarantine"
    REJECT = "reject"


class MtaStsMode(StrEnum):
    TESTING = "testing"  # senders report failures (TLS-RPT) but deliver anyway
    ENFORCE = "enforce"
    NONE = "none"  # withdraws a published policy


# RFC 8461 3.2: max_age is at most 31557600 (a year); a day is the least that makes sense.
MTA_STS_MAX_AGE_MIN = 86_400
MTA_STS_MAX_AGE_MAX = 31_557_600


class Dmarc(Frozen):
    """The `_dmarc` TXT record: what receivers do with mail that fails DMARC for the domain,
    and where they send aggregate reports."""

    policy: DmarcPolicy = DmarcPolicy.NONE
    subdomain_policy: DmarcPolicy | None = Field(
        default=None, description="sp=: the policy for subdomains (default: `policy`)."
    )
    rua: ReportAddress | None = Field(
        default=None, description="Where aggregate reports go (rua=mailto:...)."
    )


class DmarcOverride(Frozen):
    """A domain's changes to the server's `dmarc`: only the keys given replace them."""

    policy: DmarcPolicy | None = None
    subdomain_policy: DmarcPolicy | None = None
    rua: ReportAddress | None = None


class MtaSts(Frozen):
    """MTA-STS (RFC 8461): the `_mta-sts` TXT record and the policy file senders fetch from
    `https://mta-sts.<domain>/.well-known/mta-sts.txt` (served by a web server: mailcfg
    prints the file, it does not serve it)."""

    mode: MtaStsMode = MtaStsMode.TESTING
    max_age: int = Field(default=604_800, ge=MTA_STS_MAX_AGE_MIN, le=MTA_STS_MAX_AGE_MAX)


class MtaStsOverride(Frozen):
    mode: MtaStsMode | None = None
    max_age: int | None = Field(default=None, ge=MTA_STS_MAX_AGE_MIN, le=MTA_STS_MAX_AGE_MAX)


class TlsRpt(Frozen):
    """SMTP TLS reporting (RFC 8460): the `_smtp._tls` TXT record."""

    rua: ReportAddress


SpfAll = Literal["-all", "~all"]


class DnsSettings(Frozen):
    """`dns:` of `mailcfg.yml`: what `mailcfg dns` prints and `mailcfg doctor` checks."""

    ttl: int = Field(default=3600, ge=60, le=86_400, description="TTL of every record.")
    spf_all: SpfAll = Field(
        default="-all",
        description="How SPF ends: -all (fail every other sender) or ~all (softfail, while "
        "senders outside the inventory are being found).",
    )
    dmarc: Dmarc = Dmarc()
    mta_sts: MtaSts | None = Field(
        default=None, description="Publish MTA-STS (absent: no MTA-STS records)."
    )
    tls_rpt: TlsRpt | None = Field(
        default=None, description="Publish TLS-RPT (absent: no _smtp._tls record)."
    )


class DomainDns(Frozen):
    """`dns:` of a domain file: this domain's changes to the server's DMARC and MTA-STS."""

    dmarc: DmarcOverride | None = None
    mta_sts: MtaStsOverride | None = None


def domain_dmarc(server: DnsSettings, domain: DomainDns | None) -> Dmarc:
    """The DMARC settings of one domain: the server's with the domain's keys over them."""
    if domain is None or domain.dmarc is None:
        return server.dmarc
    return server.dmarc.model_copy(update=domain.dmarc.model_dump(exclude_none=True))


def domain_mta_sts(server: DnsSettings, domain: DomainDns | None) -> MtaSts | None:
    """The MTA-STS settings of one domain; None: not published. A domain's override turns it
    on even when the server's is off."""
    override = domain.mta_sts if domain is not None else None
    if override is None:
        return server.mta_sts
    base = server.mta_sts if server.mta_sts is not None else MtaSts()
    return base.model_copy(update=override.model_dump(exclude_none=True))
