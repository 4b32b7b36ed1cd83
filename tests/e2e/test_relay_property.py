"""No valid inventory renders a Postfix that relays for an outside client or takes a forged local
sender on port 25: a property checked against the real Postfix (and Dovecot, for SASL).

Hypothesis writes inventories as files (served domains, accounts, redirects to local and outside
addresses, trusted_networks, SMTP listeners on/off on moved ports, `postfix_main` overrides drawn
from harmless and dangerous candidates, `external_senders`, at the inventory, group and host
layers, host domain subsets). `compiler.load.inventory.load_inventory` decides which are valid: only
those are booted (`assume`), so a dangerous override the loader let through would be booted and
caught here. Each booted host is probed from 127.0.0.x addresses outside trusted_networks:

- on every enabled SMTP listener (25, 587, 2525 after STARTTLS, 465 in TLS) an unauthenticated
  RCPT to an outside domain is refused (5xx, or 4xx that a retry does not turn into 2xx), also
  from a client that `external_senders` lets use a local sender;
- on port 25 MAIL FROM an address of a served domain (account, redirect, a name that exists
  nowhere, upper case) is refused, unless `external_senders` lists the client's network for
  that domain (then accepted, and still refused for another served domain);
- and the controls that must keep working: an outside sender, the null sender (bounces) and a
  subdomain of a served domain are accepted for a local recipient on port 25.

Ports 22000-22999 (one block of 100 per example); every server is stopped by PID by the harness.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import smtplib
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, event, given, note, settings
from hypothesis import strategies as st
from mailhost import MailHost, boot_mailhost

from compiler.load.diagnostics import InventoryError
from compiler.load.inventory import load_inventory
from compiler.render.resolve import resolve_policy
from schemas.inventory import Inventory

pytestmark = pytest.mark.e2e

H = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"
HOST = "mx1"
PORT_BLOCKS = 10  # port bases 22000, 22100, ... 22900
DOMAINS = ("example.com", "example.org", "sub.example.com", "shop-test.example.net")
ACCOUNTS = ("alice", "bob", "postmaster")
REDIRECTS = ("info", "sales", "bob")  # bob: a redirect on an account wins over its mailbox
OUTSIDE_TARGETS = ("someone@outside.example", "list@relay-target.example")
RELAY_TARGETS = ("victim@relay-target.example", "@{domain}:victim@relay-target.example",
                 "victim%relay-target.example@{domain}")  # fmt: skip
OUTSIDE_SENDER = "someone@outside.example"
# Trusted networks never hold 127.0.0.2-127.0.0.127: the outside clients live there.
TRUSTED = ("127.0.0.1/32", "127.0.0.128/25", "[::1]/128", "10.0.0.0/8", "192.168.0.0/16")
# external_senders networks: a client of each 127.0.0.x one is used; 10.1.0.0/16 has none.
EXTERNAL = ("127.0.0.64/28", "127.0.0.80/28", "127.0.0.96/27", "10.1.0.0/16")
OUTSIDE_CLIENTS = tuple(f"127.0.0.{n}" for n in range(2, 64))
# Each SMTP listener moves within its own offsets (never another listener's, nor the ports
# the harness gives Dovecot's listeners: +10, +24, +43, +93, +95).
SMTP_SLOTS = {"smtp": (25, 26), "submission": (87, 88), "submission_alt": (52, 53),
              "smtps": (65, 66)}  # fmt: skip
HARMLESS_MAIN = (
    ("delay_warning_time", "4h"),
    ("maximal_queue_lifetime", "2d"),
    ("bounce_queue_lifetime", "1d"),
    ("smtpd_delay_reject", "no"),  # rejects move to MAIL FROM
    ("smtpd_soft_error_limit", "5"),
)
DANGEROUS_MAIN = (
    ("smtpd_banner", "$myhostname ESMTP relay-test"),  # managed by the template
    ("relay_domains", "relay-target.example"),
    ("mynetworks", "0.0.0.0/0"),
    ("smtpd_relay_restrictions", "permit"),
    ("smtpd_recipient_restrictions", "permit"),
    ("smtpd_sender_restrictions", "permit"),
    ("smtpd_authorized_xclient_hosts", "0.0.0.0/0"),
    ("permit_mx_backup_networks", "0.0.0.0/0"),
    ("parent_domain_matches_subdomains", "smtpd_access_maps"),
    ("smtpd_restriction_classes", "mailcfg_external_senders_1"),
    ("smtpd_null_access_lookup_key", "example.com"),
)

_port_bases = itertools.count()


# -- inventories ---------------------------------------------------------------------------


@st.composite
def domain_files(draw: st.DrawFn, names: list[str]) -> dict[str, dict[str, Any]]:
    files = {}
    for name in names:
        accounts = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=1, unique=True))
        redirect_names = draw(st.lists(st.sampled_from(REDIRECTS), max_size=2, unique=True))
        # Targets: accounts that are not redirect sources themselves (no loops), or outside.
        local = [f"{a}@{name}" for a in accounts if a not in redirect_names]
        redirects = [
            {"name": r, "to": draw(st.lists(st.sampled_from([*local, *OUTSIDE_TARGETS]),
                                            min_size=1, max_size=2, unique=True))}
            for r in redirect_names
        ]  # fmt: skip
        files[name] = {
            "domain": name,
            "accounts": [{"name": a, "password": H} for a in accounts],
            "redirects": redirects,
        }
    return files


@st.composite
def policy_layer(draw: st.DrawFn, domains: list[str], port_base: int) -> dict[str, Any]:
    """A partial policy: any of trusted_networks, SMTP listeners, postfix_main overrides,
    external_senders (a list replaces the lower layer's)."""
    layer: dict[str, Any] = {}
    if draw(st.booleans()):
        layer["trusted_networks"] = draw(st.lists(st.sampled_from(TRUSTED), unique=True))
    listeners = {}
    for name, slots in SMTP_SLOTS.items():
        if draw(st.integers(0, 2)) == 0:
            listeners[name] = {"enabled": draw(st.booleans()),
                               "port": port_base + draw(st.sampled_from(slots))}  # fmt: skip
    if listeners:
        layer["listeners"] = listeners
    main = dict(draw(st.lists(st.sampled_from(HARMLESS_MAIN), max_size=2, unique=True)))
    if draw(st.integers(0, 3)) == 0:
        name, value = draw(st.sampled_from(DANGEROUS_MAIN))
        main[name] = value
    if main:
        layer["postfix_main"] = main
    if draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(domains), max_size=2, unique=True))
        layer["external_senders"] = [
            {"domain": d,
             "networks": draw(st.lists(st.sampled_from(EXTERNAL), min_size=1, max_size=2,
                                       unique=True))}
            for d in chosen
        ]  # fmt: skip
    return layer


@st.composite
def inventories(draw: st.DrawFn, port_base: int) -> dict[str, Any]:
    """`{"mailcfg.yml": ..., "domains/<d>.yml": ...}` of one host, as data."""
    names = sorted(draw(st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=3, unique=True)))
    files: dict[str, Any] = {
        f"domains/{name}.yml": body for name, body in draw(domain_files(names)).items()
    }
    groups = {g: {"policy": draw(policy_layer(names, port_base))}
              for g in draw(st.lists(st.sampled_from(["g1", "g2"]), unique=True))}  # fmt: skip
    served: Any = "all"
    if draw(st.booleans()):
        served = sorted(draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
    host = {
        "address": "192.0.2.10",
        "hostname": "mx1.example.test",
        "transport": "local",
        "root": "hosts/mx1",
        "groups": list(groups),
        "domains": served,
        "policy": draw(policy_layer(names, port_base)),
    }
    # The inventory always sets trusted_networks: the default (127.0.0.0/8) would leave no
    # loopback address outside it to probe from.
    policy = {"trusted_networks": draw(st.lists(st.sampled_from(TRUSTED), unique=True))}
    policy.update(draw(policy_layer(names, port_base)))
    files["mailcfg.yml"] = {
        "schema_version": 1,
        "hosts": {HOST: host},
        "groups": groups,
        "policy": policy,
    }
    return files


def load(files: dict[str, Any], directory: Path) -> tuple[Inventory | None, str]:
    """Write the files (JSON is YAML) and load them as `mailcfg validate` does: the inventory,
    or None and the loader's errors."""
    (directory / "domains").mkdir(parents=True)
    for name, body in files.items():
        (directory / name).write_text(json.dumps(body, indent=1))
    try:
        return load_inventory(directory).inventory, ""
    except InventoryError as exc:
        return None, str(exc)


# -- SMTP probes ---------------------------------------------------------------------------


@contextmanager
def session(mh: MailHost, listener: str, source: str) -> Iterator[smtplib.SMTP]:
    """An SMTP session from `source` to `listener`, in TLS where the listener wants it."""
    tls = ssl._create_unverified_context()
    port = mh.ports[listener]
    s: smtplib.SMTP
    if listener == "smtps":
        s = smtplib.SMTP_SSL(mh.address, port, timeout=15, source_address=(source, 0),
                             context=tls)  # fmt: skip
    else:
        s = smtplib.SMTP(mh.address, port, timeout=15, source_address=(source, 0))
    try:
        s.ehlo("client.outside.test")
        if listener in ("submission", "submission_alt") and s.has_extn("starttls"):
            s.starttls(context=tls)
            s.ehlo("client.outside.test")
        yield s
    finally:
        s.close()


def attempt(mh: MailHost, listener: str, source: str, sender: str, rcpt: str) -> int:
    """The reply code of MAIL FROM `sender` + RCPT TO `rcpt` in a fresh session: the first
    refusal (>= 400), else the RCPT's. A 4xx RCPT is asked again: a retry that is accepted is
    reported as accepted. A session the server ends is a refusal (599)."""
    try:
        with session(mh, listener, source) as s:
            code, _ = s.docmd("MAIL", f"FROM:<{sender}>")
            if code >= 400:
                return int(code)
            code, _ = s.docmd("RCPT", f"TO:<{rcpt}>")
            if 400 <= code < 500:
                code, _ = s.docmd("RCPT", f"TO:<{rcpt}>")
            return int(code)
    except (smtplib.SMTPException, ConnectionError, ssl.SSLError):
        return 599


def client_in(network: str) -> str | None:
    """A 127.0.0.x client address of `network` (None for a network with no loopback client)."""
    net = ipaddress.ip_network(network)
    first = next(net.hosts(), None) if net.num_addresses > 1 else net.network_address
    return str(first) if first is not None and first.is_loopback else None


def is_trusted(address: str, trusted: list[str]) -> bool:
    """Whether `address` is in one of the `trusted_networks` (`[v6]/n` spelling included)."""
    ip = ipaddress.ip_address(address)
    for net in trusted:
        network = ipaddress.ip_network(net.replace("[", "").replace("]", ""))
        if ip.version == network.version and ip in network:
            return True
    return False


def local_senders(mh: MailHost, domain: str) -> list[str]:
    """Addresses of a served domain an outside client might forge: an account, a redirect, a
    name that exists nowhere, an upper-case spelling."""
    accounts = [a for a in mh.cfg.mailboxes if a.endswith("@" + domain)]
    redirects = [r for r in mh.cfg.redirects if r.endswith("@" + domain)]
    found = [*accounts[:1], *redirects[:1], f"nobody-here@{domain}"]
    return [*found, found[0].upper()]


def check_host(mh: MailHost) -> None:
    """Probe a booted host (see the module docstring); the expectations come from its
    resolved policy, never from the rendered files."""
    cfg = mh.cfg
    trusted = list(cfg.policy.trusted_networks)
    outside = next(c for c in OUTSIDE_CLIENTS if not is_trusted(c, trusted))
    served = list(cfg.domain_names)
    rcpt = next(iter(cfg.mailboxes))  # a local account: every domain has one
    allowed = {e.domain: e.networks for e in cfg.policy.external_senders if e.domain in served}
    smtp_listeners = [n for n in SMTP_SLOTS if n in mh.ports]

    # Relaying: refused on every listener, to every form of outside recipient, whatever the
    # sender, also from a client external_senders lets use a local sender.
    switch_clients = [(c, d) for d, nets in allowed.items() for n in nets if (c := client_in(n))]
    for listener in smtp_listeners:
        probes = [(outside, OUTSIDE_SENDER), (outside, ""), (outside, f"alice@{served[0]}")]
        probes += [(c, f"postmaster@{d}") for c, d in switch_clients[:1]]
        for source, sender in probes:
            for target in RELAY_TARGETS:
                to = target.format(domain=served[0])
                code = attempt(mh, listener, source, sender, to)
                assert code >= 400, f"{listener}: {source} <{sender}> relayed to <{to}>: {code}"

    if "smtp" not in mh.ports:
        return
    # What must keep working on port 25: outside and null senders, a served domain's subdomain.
    for sender in (OUTSIDE_SENDER, "", f"bounces@mail.{served[0]}"):
        if sender.rpartition("@")[2] in served:
            continue
        code = attempt(mh, "smtp", outside, sender, rcpt)
        assert code == 250, f"<{sender}> from {outside} to <{rcpt}> refused: {code}"
    # Forged local senders: refused from outside unless the switch allows that client.
    for domain in served:
        for sender in local_senders(mh, domain):
            code = attempt(mh, "smtp", outside, sender, rcpt)
            assert code >= 400, f"forged <{sender}> from {outside} accepted: {code}"
    for client, domain in switch_clients:
        sender = f"{ACCOUNTS[0]}-list@{domain}"
        code = attempt(mh, "smtp", client, sender, rcpt)
        assert code == 250, f"external_senders: <{sender}> from {client} refused: {code}"
        for other in served:
            if other != domain and not any(
                ipaddress.ip_address(client) in ipaddress.ip_network(n)
                for n in allowed.get(other, ())
            ):
                code = attempt(mh, "smtp", client, f"alice@{other}", rcpt)
                assert code >= 400, f"<alice@{other}> from {client} (for {domain}) accepted"


# -- the property --------------------------------------------------------------------------


@settings(
    max_examples=15,
    deadline=None,
    database=None,  # nothing written into the checkout
    phases=(Phase.explicit, Phase.generate),  # shrinking would boot hosts for minutes
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_no_valid_inventory_relays_or_takes_a_forged_local_sender(data: st.DataObject) -> None:
    port_base = 22000 + 100 * (next(_port_bases) % PORT_BLOCKS)
    files = data.draw(inventories(port_base), label="inventory")
    with tempfile.TemporaryDirectory(prefix="mailcfg-relay-") as tmp:
        inv, refusal = load(files, Path(tmp))
    if inv is None:
        note(f"refused by the loader: {refusal}")
        event("refused by the loader")
    assume(inv is not None)
    assert inv is not None
    # The harness moves paths, TLS and listener addresses under its base, and would trust
    # only the server's address: keep the inventory's own trusted_networks and SMTP ports.
    resolved = resolve_policy(inv, HOST)
    ls = resolved.listeners
    keep = {
        "trusted_networks": list(resolved.trusted_networks),
        "listeners": {n: {"port": getattr(ls, n).port} for n in SMTP_SLOTS},
        "smtpd_error_sleep_time": "0s",
    }
    event("booted")
    with boot_mailhost(inv, HOST, None, port_base, roles=("postfix", "dovecot"), policy=keep) as mh:
        main_cf = mh.tree[str(mh.postfix_config_dir / "main.cf")].content.decode()
        note(main_cf[main_cf.index("parent_domain_matches_subdomains") :])
        note(f"SMTP ports {mh.ports}, trusted {list(mh.cfg.policy.trusted_networks)}")
        event(f"external_senders rendered: {'mailcfg_external_senders_1 =' in main_cf}")
        check_host(mh)


@pytest.mark.parametrize(("name", "value"), DANGEROUS_MAIN)
def test_loader_refuses_every_dangerous_candidate(name: str, value: str, tmp_path: Path) -> None:
    """The other side of the `assume`: each dangerous candidate, at any layer, is refused by
    the loader (so the property never needs to boot it)."""
    for layer in ("policy", "group", "host"):
        policy = {"postfix_main": {name: value}}
        main: dict[str, Any] = {
            "schema_version": 1,
            "hosts": {HOST: {"address": "192.0.2.10", "hostname": "mx1.example.test",
                             "transport": "local", "root": "hosts/mx1", "groups": ["g1"],
                             "policy": policy if layer == "host" else {}}},
            "groups": {"g1": {"policy": policy if layer == "group" else {}}},
            "policy": policy if layer == "policy" else {},
        }  # fmt: skip
        domain = {"domain": "example.com", "accounts": [{"name": "alice", "password": H}]}
        inv, refusal = load({"mailcfg.yml": main, "domains/example.com.yml": domain},
                            tmp_path / layer)  # fmt: skip
        assert inv is None, f"{layer}: postfix_main.{name} = {value} was accepted"
        assert f"postfix_main.{name}" in refusal, refusal
