"""Server policy: listeners, TLS, size limits, global filter, spam checks, sending limits, paths.

Set once in `mailcfg.yml` under `policy:`; groups and hosts override any part of it.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any

import re2
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from schemas.bayes import Bayes
from schemas.common import (
    Address,
    DomainName,
    Frozen,
    Port,
    ReplyText,
    SafeLine,
    SafeText,
    Size,
    Token,
    check_length,
    json_string,
    show_value,
    size_json_schema,
)
from schemas.filtering import Dkim, FilterPorts, InboundDmarc, SpamActions
from schemas.hostvalues import (
    IPV4_MAPPED,
    TRUSTED_MIN_PREFIX,
    AbsPath,
    DnsblRange,
    DovecotTime,
    ListenAddress,
    Nameserver,
    PostfixTime,
    SocketPath,
    StateDsn,
    TlsProtocol,
    TrustedNetwork,
    UserName,
    check_host_address,
)

# A filter regex is matched against every inbound sender on the agent's event loop, and is
# written by whoever may edit mailcfg.yml: RE2 matches in time linear in the sender's length
# whatever the pattern (no catastrophic backtracking), and refuses what it cannot do that
# way (backreferences, lookaround). Its program size is capped so a pattern can't eat memory.
FILTER_REGEX_MAX_MEM = 1 << 20
FILTER_LINE_MAX = 512


def filter_regex(value: str) -> str | None:
    """The regex of a `/.../` filter line, or None for a plain substring line."""
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        return value[1:-1]
    return None


def compile_filter_regex(pattern: str) -> Any:
    """Compile a filter regex as the agent runs it (case-insensitive RE2); `re2.error` (a
    ValueError-like error) when RE2 refuses it. The one compile both `mailcfg validate` and
    the agent use, so what validates is what runs."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = FILTER_REGEX_MAX_MEM
    return re2.compile(pattern, options)


def check_filter_line(value: str) -> str:
    """A global filter line: plain text (case-insensitive substring of the sender) or /regex/."""
    if not value.strip() or re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError("a filter line must be one non-empty line without control characters")
    if len(value) > FILTER_LINE_MAX:
        raise ValueError(f"a filter line has at most {FILTER_LINE_MAX} characters")
    pattern = filter_regex(value)
    if pattern is not None:
        try:
            compile_filter_regex(pattern)
        except re2.error as exc:
            why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            raise ValueError(
                f"invalid regular expression {value!r}: {why} (RE2 syntax: no backreferences "
                "or lookaround, so every match runs in linear time)"
            ) from exc
    return value


FilterLine = Annotated[str, AfterValidator(check_filter_line)]


class Listener(Frozen):
    """One listening service. `port` may be moved (tests, NAT); `enabled` switches it off."""

    enabled: bool = True
    port: Port
    address: ListenAddress = "all"  # "all", an IPv4 or IPv6 address, or a host name


class Listeners(Frozen):
    smtp: Listener = Listener(port=25)
    submission: Listener = Listener(port=587)
    submission_alt: Listener = Listener(port=2525)
    smtps: Listener = Listener(port=465)
    imap: Listener = Listener(port=143)
    imaps: Listener = Listener(port=993)
    pop3: Listener = Listener(port=110)
    pop3s: Listener = Listener(port=995)
    lmtp: Listener = Listener(port=24, address="127.0.0.1")


# Debian's self-signed pair (package ssl-cert): a default that works, never one clients trust;
# every plan warns while a host uses it (`compiler.load.tlscheck`).
SNAKEOIL_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
# The certbot lineage mailcfg obtains with `tls.acme`: one fixed name, so the paths are known
# at load time whatever the host's names, and a change of names reissues into the same files.
ACME_LINEAGE = "mailcfg"
ACME_LIVE_DIR = f"/etc/letsencrypt/live/{ACME_LINEAGE}"
ACME_CERT = f"{ACME_LIVE_DIR}/fullchain.pem"
ACME_KEY = f"{ACME_LIVE_DIR}/privkey.pem"
ACME_URL_MAX = 512
_ACME_URL_RE = re.compile(
    r"https://(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~/+-]*)?"
)


def check_acme_directory(value: str) -> str:
    """An ACME directory URL: `https://HOST[:PORT]/PATH` (HOST a name, an IPv4 address or
    [IPv6]); no user, query or fragment, and a path of letters, digits and `._~/+-`. Only
    https: the directory hands out the account's and the orders' URLs."""
    check_length(value, ACME_URL_MAX, "an ACME directory URL")
    m = _ACME_URL_RE.fullmatch(value) if value.isascii() else None
    port = int(m["port"]) if m and m["port"] else 443
    host = m["host"].strip("[]") if m else ""
    try:
        if m is None or not 0 < port < 65536:
            raise ValueError
        check_host_address(host)
    except ValueError:
        raise ValueError(
            f"{show_value(value)} is not an ACME directory URL: https://HOST[:PORT]/PATH "
            "(https only; HOST a name, an IPv4 address or [IPv6]; no user, query or "
            "fragment; the path has letters, digits and ._~/+- only)"
        ) from None
    return value


AcmeDirectory = Annotated[
    str,
    AfterValidator(check_acme_directory),
    json_string(r"https://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/+-]*)?", ACME_URL_MAX),
]


class AcmeChallenge(StrEnum):
    HTTP_01 = "http-01"  # certbot's standalone server answers on `http_port`


def check_acme_names(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("a name is listed twice")
    return value


class Acme(Frozen):
    """A certificate from an ACME CA (Let's Encrypt, or any RFC 8555 server) for the host's
    `hostname` and `names`, obtained by Debian's certbot at apply and renewed by certbot's
    own timer; a renewal reloads Postfix and Dovecot through the on-host program's
    `activate` (the apply's own reload and verify commands)."""

    email: Address = Field(description="The ACME account's contact (expiry notices).")
    directory: AcmeDirectory = Field(
        description="The CA's ACME directory URL, https only "
        "(Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory)."
    )
    challenge: AcmeChallenge = AcmeChallenge.HTTP_01
    names: Annotated[list[DomainName], AfterValidator(check_acme_names)] = Field(
        default_factory=list,
        max_length=99,
        description="Names clients use besides the host's hostname (imap.example.com); "
        "each must resolve to this host.",
    )
    http_port: Port = Field(
        default=80,
        description="Where certbot's standalone server answers the http-01 challenge; the CA "
        "connects to port 80, so change it only behind a port forward (or in tests).",
    )
    ca_bundle: AbsPath | None = Field(
        default=None,
        description="A CA bundle on the host that certbot trusts for the directory (a private "
        "or test CA); default: the system's.",
    )


class Tls(Frozen):
    """Certificate and key files on the host; the oldest TLS version offered (TLS 1.0 and 1.1
    are deprecated, RFC 8996). With `acme` the pair is certbot's (`ACME_CERT`, `ACME_KEY`):
    another `cert` or `key` beside it is an error."""

    cert: AbsPath = SNAKEOIL_CERT
    key: AbsPath = SNAKEOIL_KEY
    min_protocol: TlsProtocol = "TLSv1.2"
    acme: Acme | None = None

    @model_validator(mode="before")
    @classmethod
    def use_acme_pair(cls, data: Any) -> Any:
        """With `acme`, the pair is certbot's. The policy layers start from the schema's
        defaults, so the snakeoil pair there means "not chosen"."""
        if not isinstance(data, dict) or data.get("acme") is None:
            return data
        for field, acme_path, default in (
            ("cert", ACME_CERT, SNAKEOIL_CERT),
            ("key", ACME_KEY, SNAKEOIL_KEY),
        ):
            if data.get(field, default) not in (default, acme_path):
                raise ValueError(
                    f"tls.{field} {show_value(str(data[field]))} and tls.acme exclude each "
                    f"other: with acme the certificate is certbot's ({ACME_CERT} and "
                    f"{ACME_KEY}); remove tls.{field} or tls.acme"
                )
        return {**data, "cert": ACME_CERT, "key": ACME_KEY}


class KnownDnsbl(StrEnum):
    SPAMHAUS_ZEN = "zen.spamhaus.org"
    SPAMCOP = "bl.spamcop.net"
    SORBS = "dnsbl.sorbs.net"
    BARRACUDA = "b.barracudacentral.org"
    MAILSPIKE = "bl.mailspike.net"
    PSBL = "psbl.surriel.com"


class Dnsbl(Frozen):
    """A DNS blacklist zone; `listed` limits which A answers count as a listing (Spamhaus
    returns 127.255.255.x for errors, which must never reject)."""

    zone: DomainName
    listed: list[DnsblRange] = Field(default_factory=lambda: ["127.0.0.2-127.0.0.254"])


class SpamPolicy(Frozen):
    spf: bool = True
    dnsbl: list[KnownDnsbl] = Field(default_factory=list)
    custom_dnsbl: list[Dnsbl] = Field(default_factory=list)
    dns_timeout: float = Field(default=2.0, gt=0, le=30)
    # Nameservers the agent queries (tests point this at a loopback server); empty: system's.
    nameservers: list[Nameserver] = Field(default_factory=list)


class OnExceed(StrEnum):
    LOCK = "lock"  # defer and lock the account until `mailcfg-agent unlock`
    DEFER = "defer"  # defer only while over the window


class CountBy(StrEnum):
    RECIPIENTS = "recipients"
    MESSAGES = "messages"


class Limits(Frozen):
    """Outbound sending limits of an account; `None` means unlimited for that window."""

    per_hour: int | None = Field(default=None, ge=0)
    per_day: int | None = Field(default=None, ge=0)
    per_month: int | None = Field(default=None, ge=0)
    on_exceed: OnExceed = OnExceed.LOCK
    count: CountBy = CountBy.RECIPIENTS


class LimitsOverride(Frozen):
    """Per-account override: only the windows given replace the defaults."""

    per_hour: int | None = Field(default=None, ge=0)
    per_day: int | None = Field(default=None, ge=0)
    per_month: int | None = Field(default=None, ge=0)


class FailAction(StrEnum):
    DUNNO = "DUNNO"
    DEFER = "DEFER_IF_PERMIT"
    TEMPFAIL = "DEFER"


class Paths(Frozen):
    """Where things live on the host. Defaults are Debian's; tests move them to temp roots.

    The paths reach shell commands run as root on the host: each is absolute, normalised and
    free of shell metacharacters (`schemas.hostvalues.AbsPath`)."""

    postfix_config_dir: AbsPath = "/etc/postfix"
    postfix_queue_dir: AbsPath = "/var/spool/postfix"
    postfix_data_dir: AbsPath = "/var/lib/postfix"
    dovecot_config_dir: AbsPath = "/etc/dovecot"
    dovecot_base_dir: AbsPath = "/run/dovecot"
    mail_root: AbsPath = "/var/vmail"
    vmail_user: UserName = "vmail"
    vmail_uid: int = Field(default=5000, ge=1)
    vmail_gid: int = Field(default=5000, ge=1)
    agent_config_dir: AbsPath = "/etc/mailcfg"
    agent_state_dir: AbsPath = "/var/lib/mailcfg/agent"
    agent_socket: SocketPath = "/run/mailcfg/policy.sock"
    maillog_file: AbsPath | None = None  # None: syslog (/var/log/mail.log)
    mail_log: AbsPath = "/var/log/mail.log"
    dovecot_log: AbsPath | None = None
    systemd_unit_dir: AbsPath = "/etc/systemd/system"
    # The rspamd role's files go to local.d/ and override.d/ below it; DKIM keys are made
    # on the host in rspamd_dkim_dir (0750 _rspamd), never in a release.
    rspamd_config_dir: AbsPath = "/etc/rspamd"
    rspamd_dkim_dir: AbsPath = "/var/lib/rspamd/dkim"
    clamd_socket: SocketPath = "/run/clamav/clamd.ctl"
    postsrsd_secret: AbsPath = "/etc/postsrsd.secret"
    postsrsd_defaults: AbsPath = "/etc/default/postsrsd"  # read by Debian's unit and init script


# External senders may be as wide as trusted networks (`TRUSTED_MIN_PREFIX`, IPv4 /8, IPv6
# /32): wider is most of the internet sending as the domain.
EXTERNAL_SENDER_MAX_NETWORKS = 256


def check_client_network(value: str) -> str:
    """A client network of `external_senders`: `a.b.c.d/n`, `v6/n` or `[v6]/n` (a single
    address without `/n` is one host), with no host bits set; returned in the form Postfix's
    cidr tables read (`2001:db8::/32`, no brackets)."""
    text = value[1:].replace("]", "", 1) if value.startswith("[") else value
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{show_value(value)} is not a network (a.b.c.d/n, v6/n or [v6]/n, no host bits "
            f"set): {show_value(str(exc))}"
        ) from None
    least = TRUSTED_MIN_PREFIX[net.version]
    if net.prefixlen < least:
        raise ValueError(
            f"{value} is too wide: an IPv{net.version} network here is a /{least} or narrower "
            "(a wider one lets much of the internet send as the domain)"
        )
    if net.version == 6 and net.overlaps(IPV4_MAPPED):
        raise ValueError(f"{value} holds IPv4-mapped addresses: list the IPv4 network instead")
    return str(net)


ClientNetwork = Annotated[str, AfterValidator(check_client_network)]


class ExternalSenders(Frozen):
    """Clients outside `trusted_networks` that may use `domain`'s addresses as envelope
    sender on port 25 (a mailing-list service, a SaaS sending as the domain). Everyone else
    outside is refused such a sender (a forged local sender). `domain` must be a domain of
    the inventory; a host that does not serve it ignores the entry."""

    domain: DomainName
    networks: list[ClientNetwork] = Field(min_length=1, max_length=EXTERNAL_SENDER_MAX_NETWORKS)


def check_external_senders(value: list[ExternalSenders]) -> list[ExternalSenders]:
    seen: set[str] = set()
    for entry in value:
        if entry.domain in seen:
            raise ValueError(
                f"domain {entry.domain} is listed twice; list all its networks in one entry"
            )
        seen.add(entry.domain)
    return value


ExternalSendersList = Annotated[list[ExternalSenders], AfterValidator(check_external_senders)]


class ServerPolicy(Frozen):
    trusted_networks: list[TrustedNetwork] = Field(
        default_factory=lambda: ["127.0.0.0/8", "[::1]/128"],
        description=(
            "Clients that may relay without authentication (Postfix mynetworks). Each entry is "
            "a network a.b.c.d/n or [v6]/n (an address without /n is one host) with no host "
            "bits set, written back as Postfix reads it. An IPv4 network wider than /8 or an "
            "IPv6 one wider than /32 (or covering IPv4-mapped addresses wider than /8) is "
            "refused: it would let a large part of the internet relay through the server; "
            "0.0.0.0/0 and ::/0 make an open relay."
        ),
    )
    listeners: Listeners = Listeners()
    tls: Tls = Tls()
    # Bytes (main.cf's unit); also written with a unit like a quota: 45M, 1G.
    message_size_limit: Annotated[Size, Field(ge=1_000), size_json_schema(1_000)] = 45_000_000
    recipient_limit: int = Field(default=100, ge=1)
    helo_required: bool = True
    disable_vrfy: bool = True
    reject_unknown_sender_domain: bool = True
    smtpd_client_connection_count_limit: int = Field(default=10, ge=1)
    default_process_limit: int = Field(default=100, ge=1)
    smtpd_timeout: PostfixTime = "180s"
    smtpd_error_sleep_time: PostfixTime = "3s"
    global_filter: list[FilterLine] = Field(default_factory=list)
    # Reject texts go into the agent's policy action and then an SMTP reply: printable ASCII,
    # at most REPLY_TEXT_MAX characters.
    global_filter_reject_text: ReplyText = "Sender rejected by the server's input filter"
    whitelist_reject_text: ReplyText = (
        "Recipient accepts mail only from approved senders; ask the recipient to add you"
    )
    whitelist_notice: bool = False  # optional explanation mail to rejected senders
    # Body of that mail; `{sender}` and `{recipient}` are replaced. None: a built-in text
    # quoting whitelist_reject_text. At most TEXT_MAX characters.
    whitelist_notice_text: SafeText | None = None
    spam: SpamPolicy = SpamPolicy()
    limits: Limits = Limits(per_hour=200, per_day=1000, per_month=20000)
    # What Postfix does when the agent can't decide (down, stalled, a check failed): defer
    # inbound mail rather than let it past the filter and lists unchecked; senders retry.
    # DUNNO (accept unchecked) is the admin's explicit choice.
    policy_fail_action_inbound: FailAction = FailAction.DEFER
    policy_fail_action_outbound: FailAction = FailAction.TEMPFAIL
    policy_state: StateDsn = "sqlite:///var/lib/mailcfg/agent/state.db"
    postmaster: Address | None = None  # default postmaster@<first domain of the host>
    paths: Paths = Paths()
    # Extra main.cf parameters (role defaults < group < host); values are single lines.
    postfix_main: dict[Token, SafeLine] = Field(default_factory=dict)
    dovecot_auth_failure_delay: DovecotTime = "2s"
    # Per served domain, the outside client networks that may send with its addresses.
    external_senders: ExternalSendersList = Field(default_factory=list)
    # Filtering (schemas.filtering): any of dkim, dmarc, spam_actions or antivirus makes rspamd
    # Postfix's milter on the host.
    dkim: Dkim | None = Field(default=None, description=Dkim.__doc__)
    dmarc: InboundDmarc | None = Field(
        default=None,
        description="Check SPF, DKIM, DMARC and ARC of inbound mail with rspamd "
        "(Authentication-Results), and apply the sender's DMARC policy when `enforce`.",
    )
    spam_actions: SpamActions | None = Field(
        default=None, description="Score inbound mail with rspamd and act on the scores."
    )
    antivirus: bool = Field(
        default=False,
        description="Scan inbound mail with ClamAV through rspamd; infected mail is refused "
        "at DATA.",
    )
    srs: bool = Field(
        default=False,
        description="Rewrite the envelope sender of mail redirected to outside domains with "
        "SRS (postsrsd), so the receiver's SPF check passes; bounces come back to the sender.",
    )
    bayes: Bayes | None = Field(
        default=None,
        description="rspamd's Bayes: per account or shared, and learning from what users file "
        "as Junk. Needs spam_actions and a Redis policy_state.",
    )
    filter_ports: FilterPorts = FilterPorts()

    @field_validator("bayes")
    @classmethod
    def check_bayes(cls, bayes: Bayes | None, info: ValidationInfo) -> Bayes | None:
        # spam_actions and policy_state are declared before bayes: validated already (absent
        # when invalid: their own error says why).
        if bayes is None or not {"spam_actions", "policy_state"} <= info.data.keys():
            return bayes
        if info.data["spam_actions"] is None:
            raise ValueError("bayes needs spam_actions: without scores rspamd has no Bayes")
        state = str(info.data["policy_state"])
        if not state.startswith(("redis://", "unix://")):
            # Only the scheme: a DSN may hold a password.
            raise ValueError(
                f"bayes needs policy_state in Redis (redis:// or unix://; rspamd keeps its "
                f"statistics there), not {state.partition(':')[0]}:"
            )
        return bayes
