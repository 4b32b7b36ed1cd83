"""Which main.cf parameters an inventory's `postfix_main` may set.

Two sets of names are refused, and this module owns both:

- **managed**: every parameter the postfix role's `main.cf.j2` sets itself (through the policy
  model: listeners, limits, TLS files, trusted_networks...). They are read from the template,
  the one place that sets them, so the rule cannot drift from what main.cf really holds.
  `postfix_main` lines come after them in main.cf, and Postfix silently takes the last one.
  Every name starting `mailcfg_` is reserved too: the template makes such parameters from
  data (restriction classes, one per entry), so not all of them appear literally.
- **denied**: parameters that decide relaying, authentication, TLS, client trust, routing or
  address rewriting, or that name programs, files, directories and users Postfix runs or opens.
  An override of one of them could open a relay, send mail elsewhere, downgrade TLS or run a
  command, so no inventory layer may set them (the shipped role defaults may: they are code).

How the deny-list was derived (Postfix 3.7.11, Debian): every name of `postconf -d` was read,
and the families below were selected by name. Each family is a pattern on the whole name, so a
parameter a later Postfix adds to a family is refused too; a name that fits no family but
belongs to one of the classes above is listed exactly. The lists are data reviewed by hand,
never computed at run time; `tests/unit/test_postfix_params.py` checks every exact name and
every pattern against this machine's `postconf -d` (a typo is caught) and that ordinary
tuning parameters (`delay_warning_time`, `maximal_queue_lifetime`...) still pass.

Per-transport queue-manager knobs, named after a master.cf service (`relay_destination_
concurrency_limit`, `relay_recipient_refill_delay`), decide how fast mail goes, never where:
they pass even where their service name fits a family (`relay`).

Names unknown to Postfix are not refused here: the postfix role's validate step turns
`postconf -n` warnings into a failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# The postfix role's main.cf template: the only place mailcfg sets main.cf parameters.
MAIN_CF_TEMPLATE = Path(__file__).resolve().parents[2] / "roles/postfix/templates/main.cf.j2"

# Parameters of mailcfg's own (restriction classes, submission restrictions).
RESERVED_PREFIX = "mailcfg_"

# A `name = value` line of main.cf.j2 (Jinja2 lines start with `{`, comments with `#`).
_TEMPLATE_PARAM = re.compile(r"^([a-z][a-z0-9_]*)[ \t]*=", re.M)

# Families, each a regular expression on the whole name (re.fullmatch), grouped by why.
DENIED_PATTERNS: tuple[str, ...] = (
    # Relaying and client trust: who may relay, which clients are trusted or may claim
    # another client's identity (XCLIENT, XFORWARD, PROXY protocol).
    r"smtpd_.*_restrictions",
    r".*relay.*",
    r"mynetworks.*",
    r".*xclient.*",
    r".*xforward.*",
    r"smtpd_authorized_.*",
    r"authorized_.*",
    r".*upstream_proxy.*",
    r"smtpd_policy_service_.*",
    r"smtpd_forbid_.*",
    r"smtpd_proxy_.*",
    r"postscreen_.*allowlist.*",
    # Authentication.
    r".*sasl.*",
    r".*_authentication",
    # TLS (smtpd_tls_*, smtp_tls_*, lmtp_tls_*, tls_*, tlsproxy_*, *_use_tls, *_enforce_tls)
    # and the EHLO keywords that announce STARTTLS and AUTH.
    r".*tls.*",
    r".*discard_(ehlo|lhlo)_keyword.*",
    # Routing: transports, content filters, milters, lookup tables (transport, virtual,
    # canonical, generic, relocated, sender-dependent, login, access, bcc, checks...), the
    # domains Postfix is final or relay destination for, and internal service routing.
    r".*_transports?",
    r".*_maps?",
    r".*_checks",
    r".*_domains",
    r".*canonical.*",
    r".*masquerade.*",
    r".*_milters",
    r".*_service_name",
    r".*reply_filter",
    r".*delivery_status_filter",
    r".*_notice_recipient",
    r"empty_address_.*",
    r"sender_dependent_.*",
    # Programs, files, directories and users: what Postfix runs or opens, and as whom.
    r".*command.*",
    r".*_director(y|ies)",
    r".*_files?",
    r".*_path",
    r".*_owner",
    r".*expansion_filter",
    r"multi_instance_.*",
)

DENIED_NAMES: frozenset[str] = frozenset(
    {
        # Relaying and client trust outside the families above.
        "mydestination",
        "relayhost",
        "inet_interfaces",
        "proxy_interfaces",
        "permit_mx_backup_networks",
        "parent_domain_matches_subdomains",
        "qmqpd_authorized_clients",
        "postscreen_access_list",
        "smtpd_client_event_limit_exceptions",
        "smtpd_null_access_lookup_key",
        "smtpd_reject_unlisted_recipient",
        "smtpd_reject_unlisted_sender",
        "smtpd_restriction_classes",
        "smtpd_sender_login_maps",
        "smtpd_helo_required",
        "smtpd_command_filter",
        "disable_vrfy_command",
        # SMTP smuggling defences (smtpd_forbid_* is a family above).
        "cleanup_replace_stray_cr_lf",
        # TLS downgrade of outgoing mail (no EHLO, no STARTTLS).
        "smtp_never_send_ehlo",
        # Routing and address rewriting.
        "content_filter",
        "default_filter_nexthop",
        "defer_transports",
        "always_bcc",
        "allow_untrusted_routing",
        "allow_percent_hack",
        "swap_bangpath",
        "resolve_dequoted_address",
        "resolve_null_domain",
        "resolve_numeric_domain",
        "recipient_delimiter",
        "receive_override_options",
        "local_header_rewrite_clients",
        "remote_header_rewrite_domain",
        "smtp_tcp_port",
        "lmtp_tcp_port",
        "known_tcp_ports",
        # Local delivery: who and what it may run or write as.
        "alias_maps",
        "alias_database",
        "local_recipient_maps",
        "allow_mail_to_commands",
        "allow_mail_to_files",
        "allow_min_user",
        "default_privs",
        "home_mailbox",
        "mailbox_command",
        "virtual_mailbox_base",
        "virtual_minimum_uid",
        "strict_mailbox_ownership",
        "require_home_directory",
        # The process environment, identities, a program, debugging aids that log sessions
        # (AUTH included) or inject faults.
        "import_environment",
        "export_environment",
        "mail_owner",
        "setgid_group",
        "maillog_file_compressor",
        "debug_peer_list",
        "debug_peer_level",
        "fault_injection_code",
    }
)

# Per-transport queue-manager knobs (`<service>_destination_concurrency_limit`...): speed only.
_SCHEDULER_TUNING = re.compile(
    r"[a-z0-9-]+_(delivery_slot_(cost|discount|loan)"
    r"|destination_concurrency_(limit|failed_cohort_limit|negative_feedback|positive_feedback)"
    r"|destination_rate_delay|destination_recipient_limit|extra_recipient_limit"
    r"|initial_destination_concurrency|minimum_delivery_slots|recipient_refill_(delay|limit)"
    r"|transport_rate_delay)"
)
_DENIED = re.compile("|".join(f"(?:{p})" for p in DENIED_PATTERNS))


def is_denied(name: str) -> bool:
    """Whether `name` decides relaying, authentication, TLS, client trust or routing (or names
    a program, file or user): an inventory's `postfix_main` may not set it."""
    if name in DENIED_NAMES:
        return True
    return _DENIED.fullmatch(name) is not None and _SCHEDULER_TUNING.fullmatch(name) is None


def template_parameters(source: str) -> frozenset[str]:
    """The parameter names a main.cf template sets (its `name = value` lines)."""
    return frozenset(_TEMPLATE_PARAM.findall(source))


def managed_parameters(template: Path = MAIN_CF_TEMPLATE) -> frozenset[str]:
    """The main.cf parameters mailcfg sets itself, read from the postfix role's template."""
    return template_parameters(template.read_text(encoding="utf-8"))


def refusal_of(name: str, managed: Iterable[str]) -> str | None:
    """Why `postfix_main` may not set `name`, or None when it may."""
    if name in managed or name.startswith(RESERVED_PREFIX):
        return (
            "this parameter is managed by mailcfg (main.cf sets it from the policy model, e.g. "
            "listeners, tls, limits, trusted_networks) and cannot be overridden in postfix_main"
        )
    if is_denied(name):
        return (
            "this parameter decides relaying, authentication, TLS, client trust or routing "
            "(or names a program, file or user) and cannot be set in postfix_main"
        )
    return None
