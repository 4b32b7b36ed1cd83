"""Inventories of the golden render cases (`tests/golden/<case>/` holds the expected trees).

Hashes are fixed strings so renders are byte-for-byte stable; the passwords are pw1, pw2, pw3.
"""

from __future__ import annotations

import datetime as dt

from schemas.domain import Account, Autoresponder, Domain, Redirect, SenderList
from schemas.inventory import GroupSpec, HostSpec, Inventory, Role
from schemas.policy import LimitsOverride

H1 = (
    "{SHA512-CRYPT}$6$JCaYrawv3gYKm50L$GECGzDAs4VodT9z.Er1Ves5KQCYKwpgz3xvRo8tshsPQl7NxXwPBBgJ1"
    "UEi3gmyyoCiu6KsMb3swH2PvGqL6F1"
)
H2 = (
    "{SHA512-CRYPT}$6$twnhwPGfXxvGVnRS$1b6wlTXV69fLqxD9ghiPwte5JlwAOtKhJpGN5dwqb1k/KJ3Xxz7iG/w/"
    "J1UBFcPmdUBP2era5NBobLQ0pMEUF/"
)
H3 = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"


def minimal() -> tuple[Inventory, str]:
    """One host with every role and defaults everywhere; one domain, one account."""
    inv = Inventory(
        hosts={"mx1": HostSpec(address="192.0.2.10", hostname="mx1.example.com")},
        domains={"example.com": Domain(domain="example.com", accounts=[Account(name="alice",
                                                                               password=H1)])},
    )  # fmt: skip
    return inv, "mx1"


def full() -> tuple[Inventory, str]:
    """Everything the roles can express: two domains, quotas, protocol switches, redirects
    (on a mailbox, multi-target, outside), declared postmaster, lists, autoresponder, limit
    overrides, a group and host policy overriding listeners, TLS, logs, postfix_main, and
    outside networks allowed to send as served domains (external_senders)."""
    example = Domain(
        domain="example.com",
        admins=["@example/mail-admins"],
        accounts=[
            Account(
                name="alice",
                password=H1,
                quota="2G",
                whitelist=SenderList(enabled=True, entries=["boss@partner.org", "@partner.org"]),
                autoresponder=Autoresponder(
                    subject="Away",
                    body="I am away.\nBack on Monday.",
                    only_whitelisted=True,
                    start=dt.date(2026, 1, 1),
                    end=dt.date(2026, 1, 31),
                ),
            ),
            Account(name="bob", password=H2, imap=False, limits=LimitsOverride(per_hour=10)),
            Account(
                name="carol",
                password=H3,
                pop3=False,
                quota="512M",
                blacklist=SenderList(enabled=True, entries=["spam@bad.example"]),
            ),
            Account(name="postmaster", password=H1),
            Account(name="gone", password=H1, enabled=False),
        ],
        redirects=[
            Redirect(name="sales", to=["alice@example.com", "bob@example.com"]),
            Redirect(name="carol", to=["carol@example.org"]),
            Redirect(name="info", to="someone@outside.example"),
        ],
    )
    org = Domain(
        domain="example.org",
        accounts=[Account(name="carol", password=H2)],
        redirects=[Redirect(name="webmaster", to=["alice@example.com"])],
    )
    inv = Inventory(
        hosts={
            "mx2": HostSpec(
                address="192.0.2.20",
                hostname="mx2.example.net",
                groups=["eu"],
                policy={
                    "listeners": {
                        "submission_alt": {"enabled": False, "port": 2525},
                        "pop3": {"enabled": False, "port": 110},
                        "imap": {"port": 1143, "address": "192.0.2.20"},
                    },
                    "postfix_main": {"smtpd_tls_loglevel": "0", "delay_warning_time": "4h"},
                    "paths": {
                        "maillog_file": "/var/log/postfix.log",
                        "dovecot_log": "/var/log/dovecot.log",
                    },
                },
            )
        },
        groups={
            "eu": GroupSpec(
                policy={
                    "trusted_networks": ["127.0.0.0/8", "[::1]/128", "192.0.2.0/24"],
                    "message_size_limit": 20000000,
                    "recipient_limit": 50,
                    "tls": {
                        "cert": "/etc/letsencrypt/live/mx2/fullchain.pem",
                        "key": "/etc/letsencrypt/live/mx2/privkey.pem",
                    },
                    "policy_fail_action_inbound": "DEFER_IF_PERMIT",
                    "dovecot_auth_failure_delay": "5s",
                    "global_filter": ["casino", "/^[0-9]+@/"],
                    "spam": {"dnsbl": ["zen.spamhaus.org"]},
                    "postmaster": "postmaster@example.com",
                    "external_senders": [
                        {"domain": "example.org", "networks": ["203.0.113.0/24", "2001:db8::/32"]},
                        {"domain": "example.com", "networks": ["198.51.100.7"]},
                    ],
                }
            )
        },
        domains={"example.com": example, "example.org": org},
    )
    return inv, "mx2"


def no_agent() -> tuple[Inventory, str]:
    """Postfix and Dovecot only: no policy hook, no agent files."""
    inv, host = minimal()
    spec = inv.hosts[host].model_copy(update={"roles": ["postfix", "dovecot"]})
    return inv.model_copy(update={"hosts": {host: spec}}), host


def forms() -> tuple[Inventory, str]:
    """The redirect forms Postfix adds: an account that forwards and keeps a copy (with an
    autoresponder), a catch-all (beside an account, a redirect and a disabled account), and
    two alias domains, one of them of a domain another host serves."""
    example = Domain(
        domain="example.com",
        accounts=[
            Account(
                name="alice",
                password=H1,
                autoresponder=Autoresponder(subject="Away", body="Back on Monday."),
            ),
            Account(name="bob", password=H2),
            Account(name="gone", password=H3, enabled=False),
        ],
        redirects=[
            Redirect(name="alice", to=["alice@example.com", "alice@mail.example"]),
            Redirect(name="sales", to="bob@example.com"),
        ],
        catch_all="bob@example.com",
    )
    org = Domain(domain="example.org", accounts=[Account(name="carol", password=H3)])
    inv = Inventory(
        hosts={
            "mx3": HostSpec(
                address="192.0.2.30", hostname="mx3.example.com", domains=["example.com"]
            ),
            "mx4": HostSpec(address="192.0.2.40", hostname="mx4.example.org"),
        },
        domains={"example.com": example, "example.org": org},
        alias_domains={"example.net": "example.com", "example.info": "example.org"},
    )
    return inv, "mx3"


def acme() -> tuple[Inventory, str]:
    """A certificate from an ACME CA (tls.acme): the acme role's request, renewal hook and
    certbot trust drop-in, and Postfix and Dovecot pointing at certbot's lineage."""
    inv, host = minimal()
    spec = inv.hosts[host].model_copy(
        update={
            "policy": {
                "tls": {
                    "acme": {
                        "email": "hostmaster@example.com",
                        "directory": "https://acme.example.net/directory",
                        "names": ["imap.example.com", "smtp.example.com"],
                        "ca_bundle": "/etc/mailcfg/acme-ca.pem",
                    }
                }
            }
        }
    )
    hosts = {host: HostSpec.model_validate(spec.model_dump())}
    return Inventory(hosts=hosts, domains=inv.domains), host


def rspamd() -> tuple[Inventory, str]:
    """Filtering: DKIM signing, enforced inbound DMARC, spam actions, ClamAV, SRS and Bayes in
    Redis (policy_state), for two served domains and two alias domains: the rspamd, clamav and
    srs roles' files and Postfix's milter and SRS lines (no agent: its files are other cases')."""
    inv, _ = forms()
    host = "mx4"
    spec = inv.hosts[host].model_copy(
        update={
            "roles": [Role.POSTFIX, Role.DOVECOT],
            "policy": {
                "dkim": {"selector": "mc2026a", "algorithm": "rsa"},
                "dmarc": {"enforce": True},
                "spam_actions": {"add_header": 5, "rewrite_subject": 8, "reject": 12},
                "antivirus": True,
                "srs": True,
                "policy_state": "redis://127.0.0.1:6379/2",
                "spam": {"nameservers": ["127.0.0.1:5353"]},
            },
        }
    )
    hosts = {host: HostSpec.model_validate(spec.model_dump())}
    return inv.model_copy(update={"hosts": hosts}), host


CASES = {
    "minimal": minimal,
    "full": full,
    "no_agent": no_agent,
    "forms": forms,
    "acme": acme,
    "rspamd": rspamd,
}
