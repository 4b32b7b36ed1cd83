"""Value validation of the schema types (`schemas.common`, `schemas.hostvalues`,
`schemas.password`): every check is a full match, identifiers refuse control and format
characters, free text is bounded for where it lands, host paths are absolute, normalised and
free of shell metacharacters, trusted networks are real and narrow.

The corpus in `bad_inventories/schema-*` runs the same defects through the command line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from schemas import common, hostvalues
from schemas.agent import AgentConfig
from schemas.domain import Account, Autoresponder, Domain, parse_size
from schemas.inventory import HostSpec, InventoryFile, SshSpec
from schemas.password import split_hash
from schemas.policy import Dnsbl, Listener, Paths, ServerPolicy, SpamPolicy, Tls

BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
SHA = (
    "{SHA512-CRYPT}$6$JCaYrawv3gYKm50L$GECGzDAs4VodT9z.Er1Ves5KQCYKwpgz3xvRo8tshsPQl7NxXwPBBgJ1"
    "UEi3gmyyoCiu6KsMb3swH2PvGqL6F1"
)

# Every check with one value it accepts.
GOOD: list[tuple[Callable[[str], object], str]] = [
    (common.check_domain, "example.com"),
    (common.check_local_part, "alice.smith+tag"),
    (common.check_address, "alice@example.com"),
    (common.check_sender_pattern, "@example.org"),
    (common.check_sender_pattern, "friend@example.org"),
    (common.check_identifier, "mx1"),
    (common.check_admin, "@example/mail-admins"),
    (common.check_admin, "alice@example.com"),
    (common.check_token, "smtpd_tls_loglevel"),
    (common.check_safe_line, "a line"),
    (common.check_subject, "Away"),
    (common.check_reply_text, "Sender rejected"),
    (hostvalues.check_abs_path, "/etc/postfix"),
    (hostvalues.check_socket_path, "/run/mailcfg/policy.sock"),
    (hostvalues.check_host_root, "hosts/mx1"),
    (hostvalues.check_controller_path, "~/.ssh/id_ed25519"),
    (hostvalues.check_known_hosts_path, "~/.ssh/known_hosts"),
    (hostvalues.check_known_hosts_path, "ci/deploy_known_hosts"),
    (hostvalues.check_user_name, "vmail"),
    (hostvalues.check_host_address, "192.0.2.10"),
    (hostvalues.check_host_address, "mx1.example.com"),
    (hostvalues.check_listen_address, "all"),
    (hostvalues.check_listen_address, "2001:db8::25"),
    (hostvalues.check_trusted_network, "192.0.2.0/24"),
    (hostvalues.check_trusted_network, "[2001:db8::]/48"),
    (hostvalues.check_nameserver, "192.0.2.53:5353"),
    (hostvalues.check_dnsbl_range, "127.0.0.2-127.0.0.254"),
    (hostvalues.check_postfix_time, "180s"),
    (hostvalues.check_dovecot_time, "2s"),
    (hostvalues.check_state_dsn, "sqlite:///var/lib/mailcfg/agent/state.db"),
    (hostvalues.check_smtp_endpoint, "127.0.0.1:25"),
    (hostvalues.check_smtp_endpoint, "[::1]:25"),
    (hostvalues.check_policy_listen, "unix:/run/mailcfg/policy.sock"),
    (hostvalues.check_policy_listen, "tcp:127.0.0.1:10031"),
    (split_hash, BLF),
    (split_hash, SHA),
]


def _name(check: Callable[[str], object]) -> str:
    return getattr(check, "__name__", repr(check))


def test_every_check_is_covered() -> None:
    checks = {
        f"{module.__name__}.{name}"
        for module in (common, hostvalues)
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("check_") and fn.__module__ == module.__name__
    }
    checks.discard("schemas.common.check_length")  # a helper of the others
    checks.discard("schemas.common.check_safe_text")  # multi-line: tested on its own below
    covered = {f"{check.__module__}.{_name(check)}" for check, _ in GOOD}
    assert checks <= covered, f"add to GOOD: {sorted(checks - covered)}"


@pytest.mark.parametrize(("check", "value"), GOOD, ids=lambda x: _name(x) if callable(x) else x)
def test_a_trailing_newline_never_passes(check: Callable[[str], object], value: str) -> None:
    check(value)  # the value itself is fine
    for tail in ("\n", "\r\n", "\r", "\x00"):
        with pytest.raises(ValueError):
            check(value + tail)


@pytest.mark.parametrize(("check", "value"), GOOD, ids=lambda x: _name(x) if callable(x) else x)
def test_a_leading_newline_never_passes(check: Callable[[str], object], value: str) -> None:
    with pytest.raises(ValueError):
        check("\n" + value)


# Control and format characters that render as nothing or reorder what is shown.
INVISIBLE = [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u202a",  # LEFT-TO-RIGHT EMBEDDING
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u2069",  # POP DIRECTIONAL ISOLATE
    "\u200b",  # ZERO WIDTH SPACE
    "\u200d",  # ZERO WIDTH JOINER
    "\u00ad",  # SOFT HYPHEN
    "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (BOM)
    "\u2028",  # LINE SEPARATOR
    "\u2029",  # PARAGRAPH SEPARATOR
    "\x85",  # NEXT LINE (C1)
    "\x1b",  # ESCAPE
]
IDENTIFIERS = [
    (check, value)
    for check, value in GOOD
    if check
    not in (
        common.check_safe_line,
        common.check_subject,
        split_hash,  # ASCII by pattern; covered below without echoing the value
    )
]


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_identifiers_refuse_control_and_format_characters(char: str) -> None:
    for check, value in IDENTIFIERS:
        middle = len(value) // 2
        with pytest.raises(ValueError):
            check(value[:middle] + char + value[middle:])
    with pytest.raises(ValueError, match="malformed"):
        split_hash(BLF[:-3] + char + BLF[-3:])


def test_a_format_character_is_named_in_the_message() -> None:
    with pytest.raises(ValueError) as exc:
        common.check_local_part("alice\u202egpj.exe")
    assert "U+202E RIGHT-TO-LEFT OVERRIDE (an invisible format character)" in str(exc.value)
    assert "addresses are ASCII here" in str(exc.value)
    assert "\u202e" not in str(exc.value)  # escaped, so a terminal shows it


def test_lower_casing_does_not_admit_look_alikes() -> None:
    # KELVIN SIGN lower-cases to an ASCII "k": checked before lower-casing.
    with pytest.raises(ValueError, match="U\\+212A KELVIN SIGN"):
        common.check_local_part("\u212aelvin")
    with pytest.raises(ValueError, match="U\\+0130"):
        common.check_domain("\u0130example.com")


def test_one_line_text_refuses_line_breaks_of_every_kind() -> None:
    for char in ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x00", "\t"):
        with pytest.raises(ValueError, match="one line"):
            common.check_subject(f"Away{char}Bcc: victim@example.org")
    assert common.check_subject("Abwesend bis Montag, ç'est ça") == "Abwesend bis Montag, ç'est ça"


def test_multi_line_text_keeps_newline_and_tab_only() -> None:
    assert common.check_safe_text("Hello,\n\tback Monday.\n") == "Hello,\n\tback Monday.\n"
    for char in ("\r", "\x00", "\x1b", "\x85", "\u2028", "\ud800"):
        with pytest.raises(ValueError, match=r"control character|separator|surrogate"):
            common.check_safe_text(f"a{char}b")


# --- length bounds --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "limit", "prefix"),
    [
        (common.check_reply_text, common.REPLY_TEXT_MAX, ""),
        (common.check_subject, common.SUBJECT_MAX, ""),
        (common.check_safe_text, common.TEXT_MAX, ""),
        (common.check_safe_line, common.LINE_MAX, ""),
        (common.check_local_part, common.LOCAL_PART_MAX, ""),
        (common.check_identifier, common.IDENTIFIER_MAX, ""),
        (common.check_token, common.TOKEN_MAX, ""),
        (hostvalues.check_user_name, common.USER_NAME_MAX, ""),
        (hostvalues.check_abs_path, common.PATH_MAX, "/var/"),
        (hostvalues.check_socket_path, common.SOCKET_PATH_MAX, "/run/"),
        (hostvalues.check_controller_path, common.PATH_MAX, "~/"),
        (hostvalues.check_host_root, common.PATH_MAX, "hosts/"),
        (hostvalues.check_state_dsn, common.DSN_MAX, "sqlite:///"),
    ],
    ids=lambda x: _name(x) if callable(x) else str(x),
)
def test_bounds_are_exact_and_named_in_the_message(
    check: Callable[[str], object], limit: int, prefix: str
) -> None:
    value = prefix + "x" * (limit - len(prefix))
    check(value)
    with pytest.raises(ValueError, match=f"at most {limit} characters"):
        check(value + "x")


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError) as exc:
        common.check_reply_text("Rejected. " * 500)
    message = str(exc.value)
    assert "(5000 characters)" in message and len(message) < 300


def test_reply_text_is_printable_ascii_and_not_empty() -> None:
    with pytest.raises(ValueError, match="an SMTP reply text is ASCII"):
        common.check_reply_text("Refusé")
    with pytest.raises(ValueError, match="must not be empty"):
        common.check_reply_text("   ")


def test_the_reject_texts_are_bounded_in_the_inventory_and_in_the_agent_config() -> None:
    long = "Rejected. " * 410  # ~4 KB: the agent's answer would exceed its limit (DUNNO)
    for field in ("global_filter_reject_text", "whitelist_reject_text"):
        with pytest.raises(ValidationError, match="at most 200 characters"):
            ServerPolicy.model_validate({field: long})
    agent = {
        "host": "mx1",
        "hostname": "mx1.example.com",
        "listen": "unix:/run/mailcfg/policy.sock",
        "state": "sqlite:///var/lib/mailcfg/agent/state.db",
        "local_domains": ["example.com"],
        "global_filter_reject_text": long,
        "whitelist_reject_text": "ok",
        "default_limits": {},
        "postmaster": "postmaster@example.com",
    }
    with pytest.raises(ValidationError, match="at most 200 characters"):
        AgentConfig.model_validate(agent)
    AgentConfig.model_validate({**agent, "global_filter_reject_text": "Rejected"})


def test_autoresponder_and_notice_text_are_bounded() -> None:
    with pytest.raises(ValidationError, match="at most 16384 characters"):
        Autoresponder(subject="Away", body="x" * 100_000)
    with pytest.raises(ValidationError, match="at most 200 characters"):
        Autoresponder(subject="A" * 201, body="ok")
    with pytest.raises(ValidationError, match="at most 16384 characters"):
        ServerPolicy(whitelist_notice_text="x" * (common.TEXT_MAX + 1))


def test_sizes_are_ascii_digits_and_bounded() -> None:
    assert parse_size("1G") == 1024**3
    for bad in ("\u0661G", "1G\nx", "9" * 21, "1 G B"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_a_password_hash_with_a_second_line_is_malformed() -> None:
    with pytest.raises(ValueError, match="malformed"):
        split_hash(BLF + "\nroot::0:0::/:/bin/sh")
    with pytest.raises(ValueError, match="at most 512"):
        split_hash("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$" + "a" * 600 + "$b")


# --- names and admins -----------------------------------------------------------------------


def test_account_names_with_a_domain_check_the_domain_too() -> None:
    assert Account(name="Alice@Example.COM", password=BLF).name == "alice@example.com"
    with pytest.raises(ValidationError, match="ZERO WIDTH SPACE"):
        Account(name="alice@exam\u200bple.com", password=BLF)


@pytest.mark.parametrize(
    "admin", ["@alice", "@org/team", "@group/sub/team", "alice@example.com", "Alice@Example.com"]
)
def test_admins_as_codeowners_names_them(admin: str) -> None:
    assert Domain(domain="example.com", admins=[admin]).admins == [admin]


@pytest.mark.parametrize(
    "admin", ["@alice\n/ @mallory", "@alice @bob", "@-alice", "alice", "#alice", "@", "@a//b"]
)
def test_admins_that_would_change_codeowners_are_refused(admin: str) -> None:
    with pytest.raises(ValidationError, match="admins"):
        Domain(domain="example.com", admins=[admin])


@pytest.mark.parametrize("name", ["..", ".", "-x", "a/b", "a b", "mx1\n", "", "a\\b"])
def test_host_and_group_names_are_safe_path_components(name: str) -> None:
    host = {"address": "192.0.2.10", "hostname": "mx1.example.com"}
    with pytest.raises(ValidationError):
        InventoryFile.model_validate({"hosts": {name: host}})
    with pytest.raises(ValidationError):
        InventoryFile.model_validate({"hosts": {"mx1": host}, "groups": {name: {}}})
    with pytest.raises(ValidationError):
        HostSpec.model_validate({**host, "groups": [name]})


# --- host-side values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/var/vmail;reboot", "contains ';'"),
        ("/etc/postfix$(id)", "contains '$'"),
        ("/etc/ssl/`id`.pem", "contains '`'"),
        ("/var/my vmail", "contains ' '"),
        ("/var/vmail|tee", "contains '|'"),
        ("/var/vmail&", "contains '&'"),
        ("/var/vm*il", "contains '*'"),
        ("/var/~vmail", "contains '~'"),
        ("/var/vmail\u202e", "U+202E"),
        ("/var/vmail\n", "U+000A"),
        ("var/vmail", "not absolute"),
        ("/", "root directory"),
        ("/var//vmail", "'//'"),
        ("/var/vmail/", "ends with '/'"),
        ("/var/../etc", "'..' component"),
        ("/var/./vmail", "'..' component"),
        ("/var/vmail/..", "'..' component"),
    ],
)
def test_host_paths_are_absolute_normalised_and_shell_safe(path: str, why: str) -> None:
    with pytest.raises(ValueError, match="is not a usable path") as exc:
        hostvalues.check_abs_path(path)
    assert why in str(exc.value)


def test_every_host_path_field_is_checked() -> None:
    for field in Paths.model_fields:
        if field in ("vmail_uid", "vmail_gid"):
            continue
        with pytest.raises(ValidationError, match=field):
            Paths.model_validate({field: "/tmp/x;id"})
    for field in ("cert", "key"):
        with pytest.raises(ValidationError, match="is not a usable path"):
            Tls.model_validate({field: "/etc/ssl/$(id)"})


def test_dot_names_inside_a_component_are_fine() -> None:
    assert hostvalues.check_abs_path("/var/lib/.hidden/..x/a+b-c_d.e") == (
        "/var/lib/.hidden/..x/a+b-c_d.e"
    )


def test_a_socket_path_fits_sun_path() -> None:
    with pytest.raises(ValidationError, match="at most 107"):
        Paths(agent_socket="/run/" + "s" * 103)


def test_the_local_root_is_relative_or_absolute_without_metacharacters() -> None:
    assert hostvalues.check_host_root("../hosts/mx1") == "../hosts/mx1"
    assert hostvalues.check_host_root("/srv/mailcfg-demo/mx1") == "/srv/mailcfg-demo/mx1"
    for bad in ("hosts/mx1;id", "hosts/$(id)", "hosts/ mx1", "-rf", "hosts/mx1\n", ""):
        with pytest.raises(ValueError, match=r"not a usable directory|at most"):
            hostvalues.check_host_root(bad)


def test_controller_paths_may_hold_spaces_and_tilde_but_no_control_characters() -> None:
    spec = SshSpec(identity_file="~/keys/deploy key", known_hosts="/home/ci/.ssh/known_hosts")
    assert spec.identity_file == "~/keys/deploy key"
    for bad in ("~/.ssh/id\n", "~/.ssh/id\u202e", "~/.ssh/\u200bid", ""):
        with pytest.raises(ValidationError):
            SshSpec(identity_file=bad)


@pytest.mark.parametrize("user", ["root", "vmail", "_mailcfg", "deploy-1"])
def test_user_names(user: str) -> None:
    assert SshSpec(user=user).user == user
    assert Paths(vmail_user=user).vmail_user == user


@pytest.mark.parametrize("user", ["Root", "-oProxyCommand=id", "a b", "x$", "1x", "r\u00f6ot", ""])
def test_bad_user_names(user: str) -> None:
    with pytest.raises(ValidationError, match=r"not a user name|ASCII"):
        SshSpec(user=user)


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("all", "all"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("2001:DB8:0::25", "2001:db8::25"),
        ("MX1.Example.com", "mx1.example.com"),
        ("localhost", "localhost"),
    ],
)
def test_listener_addresses(address: str, stored: str) -> None:
    assert Listener(port=25, address=address).address == stored


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1;id", "$(id)", "[::1]", "fe80::1%eth0", "1.2.3.999", "*", "a b", "-x", "x_y.com"],
)
def test_bad_listener_addresses(address: str) -> None:
    with pytest.raises(ValidationError, match="is not a listener address"):
        Listener(port=25, address=address)


def test_host_addresses() -> None:
    assert HostSpec(address="192.0.2.10", hostname="mx1.example.com").address == "192.0.2.10"
    for bad in ("mx1 .bad.test", "mx1;id", "root@mx1", "[192.0.2.10]", "-oProxyCommand=id"):
        with pytest.raises(ValidationError, match="is not an IP address or host name"):
            HostSpec(address=bad, hostname="mx1.example.com")


# --- trusted networks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "stored"),
    [
        ("127.0.0.0/8", "127.0.0.0/8"),
        ("192.0.2.0/24", "192.0.2.0/24"),
        ("192.0.2.10", "192.0.2.10/32"),
        ("[::1]/128", "[::1]/128"),
        ("::1/128", "[::1]/128"),
        ("[2001:DB8::]/32", "[2001:db8::]/32"),
        ("[::ffff:10.0.0.0]/104", "[::ffff:a00:0]/104"),
    ],
)
def test_trusted_networks_are_written_as_postfix_reads_them(network: str, stored: str) -> None:
    assert ServerPolicy(trusted_networks=[network]).trusted_networks == [stored]


@pytest.mark.parametrize(
    ("network", "why"),
    [
        ("0.0.0.0/0", "every IPv4 address"),
        ("::/0", "every IPv6 address"),
        ("[::]/0", "every IPv6 address"),
        ("10.0.0.0/4", "would let 268,435,456 addresses relay"),
        ("0.0.0.0/1", "would let 2,147,483,648 addresses relay"),
        ("2000::/3", "would let 2^125 addresses relay"),
        ("[::ffff:0:0]/96", "IPv4-mapped"),
        ("::/32", "IPv4-mapped"),
        ("not-a-network", "is not a network"),
        ("10.0.0.1/8", "has host bits set (write 10.0.0.0/8"),
        ("[10.0.0.0]/8", "brackets are for IPv6 only"),
        ("10.0.0.0/33", "is not a network"),
        ("fe80::%eth0/64", "is not a network"),
        ("127.0.0.0/8\n", "is not a network"),
        ("127.0.0.0/8, 0.0.0.0/0", "is not a network"),
    ],
)
def test_invalid_or_over_broad_trusted_networks_are_refused(network: str, why: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ServerPolicy(trusted_networks=[network])
    assert why in str(exc.value)


def test_the_default_trusted_networks_validate() -> None:
    assert ServerPolicy().trusted_networks == ["127.0.0.0/8", "[::1]/128"]
    assert ServerPolicy.model_validate({}).trusted_networks == ["127.0.0.0/8", "[::1]/128"]


# --- known shapes ---------------------------------------------------------------------------


def test_nameservers_are_ip_addresses() -> None:
    good = ["192.0.2.53", "192.0.2.53:5353", "2001:db8::53", "[2001:db8::53]:53"]
    assert SpamPolicy(nameservers=good).nameservers == good
    for bad in ("ns1.example.com", "192.0.2.53:0", "192.0.2.53:99999", "192.0.2.53 ", "::1%x"):
        with pytest.raises(ValidationError, match="is not a name server"):
            SpamPolicy(nameservers=[bad])


def test_dnsbl_answer_ranges() -> None:
    good = ["127.0.0.2", "127.0.0.2-127.0.0.254", "127.0.0.0/24"]
    assert Dnsbl(zone="bl.example.org", listed=good).listed == good
    for bad in ("127.0.0.9-127.0.0.2", "127.0.0.1/24", "127.0.0.2,127.0.0.3", "x", "::1"):
        with pytest.raises(ValidationError, match="is not a DNSBL answer range"):
            Dnsbl(zone="bl.example.org", listed=[bad])


def test_time_values() -> None:
    policy = ServerPolicy(
        smtpd_timeout="300s", smtpd_error_sleep_time="1", dovecot_auth_failure_delay="2 secs"
    )
    assert policy.smtpd_timeout == "300s"
    for field, bad in [
        ("smtpd_timeout", "180s\nmynetworks = 0.0.0.0/0"),
        ("smtpd_timeout", "3 minutes"),
        ("smtpd_error_sleep_time", "-1s"),
        ("dovecot_auth_failure_delay", "2s }"),
    ]:
        with pytest.raises(ValidationError, match="time"):
            ServerPolicy.model_validate({field: bad})


def test_tls_min_protocol_is_a_known_version() -> None:
    assert Tls(min_protocol="TLSv1.3").min_protocol == "TLSv1.3"
    for bad in ("TLSv1", "SSLv3", "TLSv1.2\n", "!SSLv2"):
        with pytest.raises(ValidationError):
            Tls.model_validate({"min_protocol": bad})


@pytest.mark.parametrize(
    "dsn", ["sqlite:///var/lib/x.db", "sqlite:rel.db", "redis://127.0.0.1:6379/0", "unix:///r.s"]
)
def test_state_dsns(dsn: str) -> None:
    assert ServerPolicy(policy_state=dsn).policy_state == dsn


@pytest.mark.parametrize("dsn", ["sqlite://", "sqlite:", "mysql://x", "sqlite:///a b", ""])
def test_bad_state_dsns(dsn: str) -> None:
    with pytest.raises(ValidationError, match="state DSN"):
        ServerPolicy(policy_state=dsn)


@pytest.mark.parametrize(
    "value",
    [
        "unix:relative.sock",
        "unix:/run/x y.sock",
        "tcp:127.0.0.1",
        "tcp:127.0.0.1:0",
        "tcp:127.0.0.1:65536",
        "tcp:::1:25",
        "127.0.0.1:25",
        "udp:127.0.0.1:25",
        "",
    ],
)
def test_policy_listen_is_unix_or_tcp(value: str) -> None:
    """What `mailcfg-agent serve` would refuse to listen on is refused by validation too."""
    with pytest.raises(ValueError):
        hostvalues.check_policy_listen(value)


@pytest.mark.parametrize("value", ["127.0.0.1", "localhost:smtp", "::1:25", "a b:25", "x:99999"])
def test_smtp_endpoint_is_host_and_port(value: str) -> None:
    with pytest.raises(ValueError):
        hostvalues.check_smtp_endpoint(value)


@pytest.mark.parametrize("value", ["~/.bashrc", "/etc/cron.d/x", "known_hosts/x", "~/.ssh/"])
def test_known_hosts_must_be_named_so(value: str) -> None:
    """Trust on first use appends a line to it: never to a file that is not a known_hosts."""
    with pytest.raises(ValueError, match="not a known_hosts file"):
        hostvalues.check_known_hosts_path(value)
