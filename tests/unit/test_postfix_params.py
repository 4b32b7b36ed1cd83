"""The `postfix_main` rules: the deny-list against this machine's Postfix (`postconf -d`), the
managed names read from main.cf.j2, and their refusal at load time with file:line:col."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from compiler.load.diagnostics import InventoryError
from compiler.load.inventory import load_inventory
from compiler.load.postfix_params import (
    DENIED_NAMES,
    DENIED_PATTERNS,
    MAIN_CF_TEMPLATE,
    is_denied,
    managed_parameters,
    refusal_of,
    template_parameters,
)
from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from schemas.domain import Account, Domain
from schemas.inventory import HostSpec, Inventory

POSTCONF = shutil.which("postconf")
HARMLESS = [
    "delay_warning_time",
    "maximal_queue_lifetime",
    "smtpd_banner",
    "bounce_queue_lifetime",
    "default_destination_concurrency_limit",
    # A queue-manager knob named after the master.cf `relay` service: speed, not routing.
    "relay_destination_concurrency_limit",
    "smtpd_client_message_rate_limit",
    "notify_classes",
]
DANGEROUS = [
    "relay_domains",
    "relayhost",
    "smtpd_authorized_xclient_hosts",
    "smtpd_authorized_xforward_hosts",
    "smtpd_upstream_proxy_protocol",
    "mynetworks_style",
    "permit_mx_backup_networks",
    "smtpd_relay_restrictions",
    "smtpd_relay_before_recipient_restrictions",
    "smtpd_client_restrictions",
    "smtpd_data_restrictions",
    "smtpd_tls_ciphers",
    "smtpd_tls_security_level",
    "smtp_tls_policy_maps",
    "tls_high_cipherlist",
    "smtpd_sasl_auth_enable",
    "smtpd_sasl_exceptions_networks",
    "broken_sasl_auth_clients",
    "transport_maps",
    "default_transport",
    "sender_dependent_relayhost_maps",
    "virtual_alias_maps",
    "canonical_maps",
    "smtp_generic_maps",
    "recipient_bcc_maps",
    "always_bcc",
    "header_checks",
    "content_filter",
    "smtpd_milters",
    "smtpd_proxy_filter",
    "mailbox_command",
    "local_command_shell",
    "allow_mail_to_commands",
    "import_environment",
    "queue_directory",
    "mail_owner",
    "setgid_group",
    "authorized_submit_users",
    "smtpd_policy_service_default_action",
    "smtpd_forbid_bare_newline",
    "smtpd_discard_ehlo_keywords",
]


@pytest.fixture(scope="module")
def known() -> set[str]:
    """Every parameter name this machine's Postfix knows (`postconf -d`)."""
    assert POSTCONF, "postconf (postfix) is required for this test"
    out = subprocess.run(
        [POSTCONF, "-d"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    # `name = value`, or `name =` for an empty default.
    return {line.partition(" =")[0] for line in out.splitlines() if " =" in line}


def test_every_denied_name_is_a_postfix_parameter(known: set[str]) -> None:
    assert sorted(DENIED_NAMES - known) == []


def test_every_denied_pattern_names_postfix_parameters(known: set[str]) -> None:
    unused = [p for p in DENIED_PATTERNS if not any(re.fullmatch(p, name) for name in known)]
    assert unused == []


@pytest.mark.parametrize("name", HARMLESS)
def test_harmless_parameters_are_not_denied(name: str, known: set[str]) -> None:
    assert name in known
    assert not is_denied(name)


@pytest.mark.parametrize("name", DANGEROUS)
def test_parameters_that_open_a_relay_or_reroute_mail_are_denied(name: str) -> None:
    assert is_denied(name)
    assert refusal_of(name, frozenset()) is not None


def test_managed_parameters_are_the_ones_main_cf_sets() -> None:
    managed = managed_parameters()
    assert {"message_size_limit", "mynetworks", "smtpd_banner", "relayhost"} <= managed
    assert {"delay_warning_time", "maximal_queue_lifetime"}.isdisjoint(managed)
    assert "managed by mailcfg" in (refusal_of("smtpd_banner", managed) or "")
    assert "managed by mailcfg" in (refusal_of("mailcfg_external_senders_1", managed) or "")
    assert refusal_of("delay_warning_time", managed) is None


def test_template_parameters_reads_only_name_value_lines() -> None:
    source = textwrap.dedent(
        """\
        # comment = not a parameter
        biff = no
        myhostname={{ host }}
        {{ name }} = {{ value }}
        {% if x %}
        maillog_file = /x
        {% endif %}
            continued = line
        """
    )
    assert template_parameters(source) == {"biff", "myhostname", "maillog_file"}


def test_shipped_role_defaults_set_no_managed_parameter() -> None:
    """Role defaults are code, not inventory: they may set denied parameters (TLS log level,
    ciphers) but a managed one would give main.cf the same parameter twice."""
    defaults = role_defaults(load_roles(default_roles_dir()))
    assert set(defaults["postfix_main"]).isdisjoint(managed_parameters())


def test_rendered_main_cf_sets_each_parameter_once() -> None:
    roles = load_roles(default_roles_dir())
    spec = HostSpec(
        address="192.0.2.1",
        hostname="mx.example.com",
        policy={"postfix_main": {"delay_warning_time": "4h", "maximal_queue_lifetime": "3d"}},
    )
    domain = Domain(domain="example.com", accounts=[Account(name="a", password=_HASH)])
    inv = Inventory(hosts={"mx": spec}, domains={"example.com": domain})
    tree = render_host(resolve_host(inv, "mx", role_defaults(roles)), roles)
    text = tree["/etc/postfix/main.cf"].content.decode()
    names = Counter(re.findall(r"^([a-z][a-z0-9_]*) *=", text, re.M))
    assert [name for name, n in names.items() if n > 1] == []
    assert names["delay_warning_time"] == 1
    assert MAIN_CF_TEMPLATE.is_file()


_HASH = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"
_MAIN = """\
schema_version: 1
groups:
  edge:
    policy:
      postfix_main:
        relay_domains: example.net
hosts:
  mx:
    address: 192.0.2.1
    hostname: mx.example.com
    groups: [edge]
    policy:
      postfix_main:
        smtpd_authorized_xforward_hosts: 0.0.0.0/0
policy:
  postfix_main:
    delay_warning_time: 4h
    message_size_limit: "0"
    mynetworks_style: subnet
"""


def test_every_layer_is_checked_at_load_with_its_position(tmp_path: Path) -> None:
    (tmp_path / "domains").mkdir()
    (tmp_path / "mailcfg.yml").write_text(_MAIN)
    with pytest.raises(InventoryError) as info:
        load_inventory(tmp_path)
    errors = [d.format().replace(f"{tmp_path}/", "") for d in info.value.diagnostics]
    where = {e.split(": error: ")[0]: e for e in errors if ": error: " in e}
    assert "groups.edge.policy.postfix_main.relay_domains" in where["mailcfg.yml:6:9"]
    assert "smtpd_authorized_xforward_hosts" in where["mailcfg.yml:14:9"]
    assert "managed by mailcfg" in where["mailcfg.yml:18:5"]
    assert "mynetworks_style" in where["mailcfg.yml:19:5"]
    assert len(where) == 4  # delay_warning_time passes


def test_example_inventory_overrides_still_load() -> None:
    loaded = load_inventory(Path(__file__).resolve().parents[2] / "inventory")
    overrides = loaded.inventory.hosts["mx1"].policy["postfix_main"]
    assert set(overrides) == {"delay_warning_time", "maximal_queue_lifetime"}
