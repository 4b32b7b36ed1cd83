"""load_inventory: every error class with its exact file:line:col, all errors of a run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compiler.load.diagnostics import InventoryError
from compiler.load.inventory import LoadedInventory, load_inventory

DATA = Path(__file__).parent / "data" / "inventories"
REPO = Path(__file__).resolve().parents[2]
BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
MD5 = "{MD5-CRYPT}$1$/0FlUclv$hAvuorFl2DVrbFFfv3GLw/"

MAIN = """\
schema_version: 1
hosts:
  mx:
    address: 127.0.0.1
    hostname: mx.example.com
"""
# A host that names its certificate (Debian's snakeoil default is a warning of its own), for
# the tests that count warnings.
NAMED_PAIR = (
    MAIN + "    policy: {tls: {cert: /etc/ssl/mail/cert.pem, key: /etc/ssl/mail/key.pem}}\n"
)


def write(root: Path, main: str = MAIN, **domains: str) -> Path:
    (root / "domains").mkdir(parents=True, exist_ok=True)
    (root / "mailcfg.yml").write_text(textwrap.dedent(main))
    for name, text in domains.items():
        (root / "domains" / f"{name.replace('_', '.')}.yml").write_text(textwrap.dedent(text))
    return root


def errors_of(root: Path) -> list[str]:
    """Formatted diagnostics, file names relative to `root`."""
    with pytest.raises(InventoryError) as info:
        load_inventory(root)
    return [d.format().replace(f"{root}/", "") for d in info.value.diagnostics]


def load(root: Path) -> LoadedInventory:
    return load_inventory(root)


def test_example_inventory_loads_without_errors_or_warnings() -> None:
    loaded = load_inventory(REPO / "inventory")
    assert loaded.warnings == ()
    inv = loaded.inventory
    assert sorted(inv.hosts) == ["mx1", "mx2"]
    assert sorted(inv.domains) == ["example.com", "example.org"]
    assert len(loaded.files) == 3


def test_good_fixture_keeps_yaml_12_scalars() -> None:
    loaded = load_inventory(DATA / "good")
    accounts = loaded.inventory.domains["good.test"].accounts
    # `imap: no` is false through the boolean field; `name: "no"` and `to: no@...` stay text.
    assert accounts[0].imap is False
    assert accounts[1].name == "no"
    assert loaded.inventory.domains["good.test"].redirects[0].to == ["no@good.test"]


def test_mailcfg_yml_path_is_accepted_too() -> None:
    loaded = load_inventory(DATA / "good" / "mailcfg.yml")
    assert list(loaded.inventory.domains) == ["good.test"]


BAD_EXPECTED = [
    "domains/bad.test.yml:3:11: error: accounts[0].name: 'a:b' is not a valid local part: "
    "letters, digits and .!$%&*+=?^_`{|}~- only; no whitespace, '/', ':', ',', quotes or "
    "control "
    "characters",
    "domains/bad.test.yml:6:15: error: accounts[1].password: password must be a hash with a "
    "scheme prefix such as {SHA512-CRYPT}$6$..., {BLF-CRYPT} or {ARGON2ID}; plaintext passwords "
    "are not allowed (make one with `mailcfg passwd`)",
    "domains/bad.test.yml:8:15: warning: accounts[2].password: {MD5-CRYPT} is a legacy password "
    "scheme (weak; accepted for migration only); make a new hash with `mailcfg passwd` "
    "(BLF-CRYPT or SHA512-CRYPT)",
    "domains/bad.test.yml:9:11: error: accounts[3].name: account legacy@bad.test is declared "
    "twice (first at domains/bad.test.yml:7:11); an address may have one account",
    "domains/bad.test.yml:10:15: warning: accounts[3].password: {MD5-CRYPT} is a legacy password "
    "scheme (weak; accepted for migration only); make a new hash with `mailcfg passwd` "
    "(BLF-CRYPT or SHA512-CRYPT)",
    "domains/bad.test.yml:11:11: error: accounts[4].name: carol@other.test belongs to domain "
    "other.test, not bad.test; declare it in that domain's file (domains/other.test.yml)",
    "domains/bad.test.yml:15:12: error: accounts[5].quota: '3 apples' is not a size (bytes, or a "
    "number with K, M, G or T)",
    "domains/bad.test.yml:17:16: error: accounts[5].autoresponder.subject: 'away\\x07' contains "
    "U+0007 (a control character): a subject is one line without control characters (newline, "
    "tab, NUL...)",
    "domains/bad.test.yml:21:9: error: redirects[0].to[0]: redirect loop: loop1@bad.test → "
    "loop2@bad.test → loop3@bad.test → loop1@bad.test (mail would circle until it bounces); "
    "redirects in the loop: loop1@bad.test at domains/bad.test.yml:20:11, loop2@bad.test at "
    "domains/bad.test.yml:22:11, loop3@bad.test at domains/bad.test.yml:24:11",
    "domains/bad.test.yml:27:9: error: redirects[3].to[0]: 'a b' is not a valid local part: "
    "letters, digits and .!$%&*+=?^_`{|}~- only; no whitespace, '/', ':', ',', quotes or "
    "control "
    "characters",
    "domains/bad.test.yml:28:11: error: redirects[4].name: redirect loop2@bad.test is declared "
    "twice (first at domains/bad.test.yml:22:11); list every target in one redirect's `to`",
    "domains/empty.test.yml:1:1: error: the file is empty; expected a mapping of keys to values",
    "domains/list.test.yml:1:1: error: expected a mapping of keys to values, found a list",
    "domains/syntax.test.yml:2:1: error: invalid YAML: while parsing a flow sequence; expected "
    "',' or ']', but got '<stream end>'",
    "domains/wrong-name.yml:1:9: warning: domain: domain bad2.test is served by no host (add it "
    "to a host's `domains`)",
    "domains/wrong-name.yml:1:9: error: domain: the file declares domain 'bad2.test' but is "
    "named 'wrong-name'; a domain file must be named after its domain (bad2.test.yml)",
    "domains/wrong-name.yml:4:15: error: accounts[0].password: malformed {SHA512-CRYPT} hash",
    "domains/wrong-name.yml:5:5: error: accounts[0].unknown_flag: unknown key 'unknown_flag'; "
    "allowed: name, password, quota, imap, pop3, enabled, whitelist, blacklist, autoresponder, "
    "limits",
    "mailcfg.yml:4:14: error: hosts.mx1.address: 'mx1 .bad.test' is not an IP address or host "
    "name (IPv6 without brackets; host names of ASCII letters, digits, '-' and '.')",
    "mailcfg.yml:6:22: error: hosts.mx1.roles[1]: Input should be 'postfix', 'dovecot' or "
    "'agent' (got 'webmail')",
    "mailcfg.yml:7:20: error: hosts.mx1.groups[1]: unknown group 'nosuch'; groups: edge",
    "mailcfg.yml:8:25: error: hosts.mx1.domains[1]: unknown domain 'missing.test': there is no "
    "domains/missing.test.yml",
    "mailcfg.yml:9:5: error: hosts.mx1.colour: unknown key 'colour'; allowed: address, "
    "hostname, transport, root, ssh, roles, groups, domains, policy, public_addresses",
    "mailcfg.yml:12:22: error: hosts.mx1.policy.listeners.smtp.port: Input should be greater "
    "than or equal to 1 (got 0)",
    "mailcfg.yml:16:24: error: groups.edge.policy.recipient_limit: Input should be greater than "
    "or equal to 1 (got -5)",
    "mailcfg.yml:18:9: error: groups.edge.policy.postfix_main.smtpd_banner: this parameter is "
    "managed by mailcfg (main.cf sets it from the policy model, e.g. listeners, tls, limits, "
    "trusted_networks) and cannot be overridden in postfix_main",
    "mailcfg.yml:18:23: error: groups.edge.policy.postfix_main.smtpd_banner: 'hello\" world': "
    "quotes and backslashes have no meaning in main.cf and are not allowed",
    "mailcfg.yml:20:25: error: policy.global_filter[1]: invalid regular expression "
    "'/unclosed[/': missing ]: [ (RE2 syntax: no backreferences or lookaround, so every "
    "match runs in linear time)",
    "mailcfg.yml:22:5: error: policy.postfix_main.bad=name: 'bad=name' is not a main.cf "
    "parameter name (lower-case letters, digits and '_')",
    "mailcfg.yml:23:5: error: policy.postfix_main.smtpd_tls_ciphers: this parameter decides "
    "relaying, authentication, TLS, client trust or routing (or names a program, file or user) "
    "and cannot be set in postfix_main",
    "mailcfg.yml:23:24: error: policy.postfix_main.smtpd_tls_ciphers: '{ high': unbalanced '{' "
    "'}' (main.cf braces group a value; they must pair up)",
]


def test_bad_fixture_reports_every_error_of_every_file_with_its_position() -> None:
    root = DATA / "bad"
    assert errors_of(root) == BAD_EXPECTED


def test_inventory_error_str_lists_everything_and_counts_errors() -> None:
    with pytest.raises(InventoryError) as info:
        load_inventory(DATA / "bad")
    text = str(info.value)
    assert text.endswith("28 error(s) in the inventory")
    assert text.count("\n") == len(BAD_EXPECTED)


# --- YAML level ---------------------------------------------------------------------------------


def test_yaml_syntax_error_has_parser_position(tmp_path: Path) -> None:
    write(tmp_path, example_com="domain: example.com\naccounts:\n  - name: a\n   password: x\n")
    assert errors_of(tmp_path) == [
        "domains/example.com.yml:4:4: error: invalid YAML: while parsing a block collection; "
        "expected <block end>, but found '<block mapping start>'"
    ]


def test_duplicate_key_is_an_error_at_the_second_key(tmp_path: Path) -> None:
    write(tmp_path, example_com="domain: example.com\nadmins: []\ndomain: example.com\n")
    assert errors_of(tmp_path) == [
        'domains/example.com.yml:3:1: error: duplicate key "domain"; each key may appear '
        "once in a mapping"
    ]


def test_duplicate_key_in_mailcfg_yml(tmp_path: Path) -> None:
    write(tmp_path, MAIN + "hosts: {}\n")
    assert errors_of(tmp_path) == [
        'mailcfg.yml:6:1: error: duplicate key "hosts"; each key may appear once in a mapping'
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "1:1: error: the file is empty; expected a mapping of keys to values"),
        (
            "# only a comment\n",
            "1:1: error: the file is empty; expected a mapping of keys to values",
        ),
        (
            "just text\n",
            "1:1: error: expected a mapping of keys to values, found the value 'just text'",
        ),
        ("- a\n", "1:1: error: expected a mapping of keys to values, found a list"),
        (
            "a: 1\n---\nb: 2\n",
            "1:1: error: the file holds 2 YAML documents; exactly one is allowed",
        ),
    ],
)
def test_a_domain_file_is_one_non_empty_mapping(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, example_com=text)
    assert errors_of(tmp_path) == [f"domains/example.com.yml:{expected}"]


def test_missing_mailcfg_yml(tmp_path: Path) -> None:
    (tmp_path / "domains").mkdir()
    assert errors_of(tmp_path) == [f"mailcfg.yml: error: no mailcfg.yml in {tmp_path}"]


def test_slow_path_constructs_give_the_same_model(tmp_path: Path) -> None:
    """Tags and `~` go through ruamel; the result follows YAML 1.2."""
    write(
        tmp_path,
        example_com=f"""\
        domain: example.com
        accounts:
          - name: alice
            password: "{BLF}"
            quota: !!str 1G
            autoresponder: ~
          - name: bob
            password: "{BLF}"
            imap: True
        redirects:
          - name: info
            to: [alice@example.com]
        """,
    )
    accounts = load(tmp_path).inventory.domains["example.com"].accounts
    assert [a.name for a in accounts] == ["alice", "bob"]
    assert accounts[0].quota == 1024**3 and accounts[0].autoresponder is None
    assert accounts[1].imap is True


# --- schema errors ------------------------------------------------------------------------------


def test_unknown_key_points_at_the_key_and_lists_allowed_ones(tmp_path: Path) -> None:
    write(
        tmp_path,
        example_com=f'domain: example.com\naccounts:\n  - name: a\n    password: "{BLF}"\n'
        "    quotas: 1G\n",
    )
    assert errors_of(tmp_path) == [
        "domains/example.com.yml:5:5: error: accounts[0].quotas: unknown key 'quotas' (did you "
        "mean 'quota'?); allowed: name, password, quota, imap, pop3, enabled, whitelist, "
        "blacklist, autoresponder, limits"
    ]


def test_missing_required_key_points_at_its_mapping(tmp_path: Path) -> None:
    write(tmp_path, example_com="domain: example.com\naccounts:\n  - name: a\n    quota: 1G\n")
    assert errors_of(tmp_path) == [
        "domains/example.com.yml:3:5: error: accounts[0].password: required key 'password' is "
        "missing"
    ]


def test_plaintext_password_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    write(
        tmp_path,
        example_com="domain: example.com\naccounts:\n  - name: a\n    password: s3cret-Passw0rd\n",
    )
    (error,) = errors_of(tmp_path)
    assert error.startswith("domains/example.com.yml:4:15: error: accounts[0].password: ")
    assert "plaintext passwords are not allowed" in error
    assert "s3cret" not in error


def test_unknown_role_and_bad_domains_value(tmp_path: Path) -> None:
    write(tmp_path, MAIN + "    roles: [postfix, imapd]\n    domains: some\n")
    assert errors_of(tmp_path) == [
        "mailcfg.yml:6:22: error: hosts.mx.roles[1]: Input should be 'postfix', 'dovecot' or "
        "'agent' (got 'imapd')",
        "mailcfg.yml:7:14: error: hosts.mx.domains: Input should be a valid list (got 'some'); "
        "or Input should be 'all' (got 'some')",
    ]


def test_schema_version_is_checked(tmp_path: Path) -> None:
    write(tmp_path, MAIN.replace("schema_version: 1", "schema_version: 2"))
    assert errors_of(tmp_path) == [
        "mailcfg.yml:1:17: error: schema_version: Input should be 1 (got 2)"
    ]


# --- injection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "where", "message"),
    [
        (
            'password: "{BLF-CRYPT}$2b$12$abc\\nroot::0:0::/:/bin/sh"',
            "4:15: error: accounts[0].password",
            "malformed {BLF-CRYPT} hash",
        ),
        (
            'password: "' + BLF + '"\n    whitelist: {entries: ["a@b.com\\nx"]}',
            "5:27: error: accounts[0].whitelist.entries[0]",
            "is not a domain name",
        ),
    ],
)
def test_injection_in_account_values_is_rejected(
    tmp_path: Path, account: str, where: str, message: str
) -> None:
    write(tmp_path, example_com=f"domain: example.com\naccounts:\n  - name: a\n    {account}\n")
    (error,) = errors_of(tmp_path)
    assert error.startswith(f"domains/example.com.yml:{where}: ")
    assert message in error


def test_colon_in_local_part_whitespace_in_target_and_control_char_in_subject(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        example_com=f"""\
        domain: example.com
        accounts:
          - name: "bob:x"
            password: "{BLF}"
          - name: carol
            password: "{BLF}"
            autoresponder:
              subject: "Away\\rBcc: victim@example.org"
              body: "ok"
        redirects:
          - name: info
            to: ["alice@example.com ,evil@example.org"]
        """,
    )
    errors = errors_of(tmp_path)
    assert [e.split(": error: ")[0] for e in errors] == [
        "domains/example.com.yml:3:11",
        "domains/example.com.yml:8:16",
        "domains/example.com.yml:12:10",
    ]
    assert "no whitespace, '/', ':'" in errors[0]
    assert "control character" in errors[1]
    assert "is not an address of the form local@domain" in errors[2]


def test_newline_in_global_filter_line_and_main_cf_override(tmp_path: Path) -> None:
    write(
        tmp_path,
        MAIN
        + """\
policy:
  global_filter: ["spam\\nreject"]
  postfix_main:
    smtpd_banner: "$myhostname\\nmynetworks = 0.0.0.0/0"
    relayhost: "[relay]:25 }"
""",
    )
    errors = errors_of(tmp_path)
    assert [e.split(": error: ")[0] for e in errors] == [
        "mailcfg.yml:7:19",
        "mailcfg.yml:9:5",
        "mailcfg.yml:9:19",
        "mailcfg.yml:10:5",
        "mailcfg.yml:10:16",
    ]
    assert "one non-empty line" in errors[0]
    assert "managed by mailcfg" in errors[1]
    assert "control character" in errors[2]
    assert "managed by mailcfg" in errors[3]
    assert "unbalanced" in errors[4]


def test_balanced_braces_in_main_cf_values_are_allowed(tmp_path: Path) -> None:
    write(
        tmp_path,
        MAIN
        + "policy:\n  postfix_main:\n"
        + "    smtpd_reject_footer: see { https://example.com/help }\n",
    )
    policy = load(tmp_path).inventory.policy
    assert "{ https://example.com/help }" in policy.postfix_main["smtpd_reject_footer"]


# --- cross-checks -------------------------------------------------------------------------------


def test_account_and_redirect_of_the_same_name_are_allowed(tmp_path: Path) -> None:
    write(
        tmp_path,
        NAMED_PAIR,
        example_com=f"""\
        domain: example.com
        accounts: [{{name: a, password: "{BLF}"}}, {{name: b, password: "{BLF}"}}]
        redirects: [{{name: a, to: b@example.com}}]
        """,
    )
    assert load(tmp_path).warnings == ()


def test_duplicate_account_across_files_names_both_places(tmp_path: Path) -> None:
    write(
        tmp_path,
        example_com=f'domain: example.com\naccounts:\n  - name: a\n    password: "{BLF}"\n',
        example_org=f"domain: example.org\naccounts:\n  - name: a@example.com\n"
        f'    password: "{BLF}"\n',
    )
    assert errors_of(tmp_path) == [
        "domains/example.org.yml:3:11: error: accounts[0].name: a@example.com belongs to domain "
        "example.com, not example.org; declare it in that domain's file "
        "(domains/example.com.yml)",
        "domains/example.org.yml:3:11: error: accounts[0].name: account a@example.com is declared "
        "twice (first at domains/example.com.yml:3:11); an address may have one account",
    ]


def test_self_redirect_without_a_mailbox_is_an_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        example_com="domain: example.com\nredirects:\n  - name: a\n"
        "    to: [x@y.org, a@example.com]\n",
    )
    assert errors_of(tmp_path) == [
        "domains/example.com.yml:4:19: error: redirects[0].to[1]: redirect a@example.com names "
        "itself, but a@example.com is no enabled account: mail to it would bounce (a redirect "
        "keeps a copy only in the mailbox of an enabled account of that address; drop it from "
        "`to`)"
    ]


def test_multi_hop_loop_across_files_names_every_hop(tmp_path: Path) -> None:
    write(
        tmp_path,
        example_com="domain: example.com\nredirects:\n  - {name: a, to: b@example.org}\n",
        example_org="domain: example.org\nredirects:\n  - {name: b, to: [c@example.org]}\n"
        "  - {name: c, to: [keep@elsewhere.net, a@example.com]}\n",
    )
    (error,) = errors_of(tmp_path)
    assert error == (
        "domains/example.com.yml:3:19: error: redirects[0].to[0]: redirect loop: a@example.com → "
        "b@example.org → c@example.org → a@example.com (mail would circle until it bounces); "
        "redirects in the loop: a@example.com at domains/example.com.yml:3:12, b@example.org at "
        "domains/example.org.yml:3:12, c@example.org at domains/example.org.yml:4:12"
    )


def test_chain_without_cycle_is_fine_and_dangling_local_target_warns(tmp_path: Path) -> None:
    write(
        tmp_path,
        NAMED_PAIR,
        example_com=f"""\
        domain: example.com
        accounts: [{{name: z, password: "{BLF}"}}]
        redirects:
          - {{name: a, to: b@example.com}}
          - {{name: b, to: [z@example.com, nobody@example.com]}}
        """,
    )
    warnings = [w.format().replace(f"{tmp_path}/", "") for w in load(tmp_path).warnings]
    assert warnings == [
        "domains/example.com.yml:5:35: warning: redirects[1].to[1]: nobody@example.com is in "
        "local domain example.com but is neither an account nor a redirect there; mail to it "
        "will bounce"
    ]


def test_unknown_group_and_domain_in_host(tmp_path: Path) -> None:
    write(
        tmp_path,
        MAIN + "    groups: [edge]\n    domains: [example.com, example.net]\n",
        example_com="domain: example.com\n",
    )
    assert errors_of(tmp_path) == [
        "mailcfg.yml:6:14: error: hosts.mx.groups[0]: unknown group 'edge'; groups: none are "
        "defined",
        "mailcfg.yml:7:28: error: hosts.mx.domains[1]: unknown domain 'example.net': there is no "
        "domains/example.net.yml",
    ]


def test_policy_errors_land_in_the_layer_that_sets_the_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        """\
        schema_version: 1
        hosts:
          a:
            address: 127.0.0.1
            hostname: a.example.com
            groups: [g1, g2]
            policy:
              recipient_limit: 0
          b:
            address: 127.0.0.2
            hostname: b.example.com
            groups: [g1]
        groups:
          g1:
            policy:
              spam: {dns_timeout: 99}
              no_such_setting: 1
          g2:
            policy:
              listeners: {smtp: {enabled: false}}
        policy:
          message_size_limit: 10
        """,
    )
    assert errors_of(tmp_path) == [
        "mailcfg.yml:8:24: error: hosts.a.policy.recipient_limit: Input should be greater than "
        "or equal to 1 (got 0)",
        "mailcfg.yml:16:27: error: groups.g1.policy.spam.dns_timeout: Input should be less than "
        "or equal to 30 (got 99)",
        "mailcfg.yml:17:7: error: groups.g1.policy.no_such_setting: unknown key "
        "'no_such_setting'; allowed: " + ", ".join(_server_policy_fields()),
        "mailcfg.yml:22:23: error: policy.message_size_limit: Input should be greater than or "
        "equal to 1000 (got 10)",
    ]


def _server_policy_fields() -> list[str]:
    from schemas.policy import ServerPolicy

    return list(ServerPolicy.model_fields)


def test_host_override_wins_over_group_and_inventory(tmp_path: Path) -> None:
    from compiler.render.resolve import resolve_host

    loaded = load_inventory(REPO / "inventory")
    mx2 = resolve_host(loaded.inventory, "mx2")
    assert mx2.policy.limits.per_hour == 100  # host
    assert mx2.policy.smtpd_client_connection_count_limit == 20  # group
    assert mx2.policy.spam.dnsbl[-1] == "bl.spamcop.net"  # group replaces the list
    assert mx2.domain_names == ("example.com",)


def test_legacy_hash_is_a_warning_not_an_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        NAMED_PAIR,
        example_com=f'domain: example.com\naccounts:\n  - name: old\n    password: "{MD5}"\n',
    )
    loaded = load(tmp_path)
    (warning,) = loaded.warnings
    assert warning.severity == "warning"
    assert (warning.line, warning.col, warning.field) == (4, 15, "accounts[0].password")
    assert "legacy password scheme" in warning.message
