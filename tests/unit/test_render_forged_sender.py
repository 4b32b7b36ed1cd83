"""Port 25 refuses a forged local sender: the rendered main.cf, read back by the real Postfix
tools (`postconf`, `postmap`), checks a served domain's senders after `permit_mynetworks`, and
lets through only the client networks `policy.external_senders` lists for that domain.

The end-to-end proof with a running Postfix is tests/e2e/test_relay_property.py; this is the
fast check of where the restriction sits and what its tables answer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from compiler.load.inventory import load_inventory
from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from schemas.domain import Account, Domain
from schemas.inventory import HostSpec, Inventory

REPO = Path(__file__).resolve().parent.parent.parent
H = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"
REFUSAL = "553 5.7.1 not logged in; a local domain sends through authenticated submission"


def write_postfix_dir(inv: Inventory, host: str, directory: Path) -> Path:
    """Render `host` and write its Postfix files to `directory` (as `postconf -c` reads them),
    with the hash maps built."""
    roles = load_roles(default_roles_dir())
    cfg = resolve_host(inv, host, role_defaults(roles))
    tree = render_host(cfg, roles)
    config_dir = cfg.policy.paths.postfix_config_dir
    directory.mkdir(parents=True, exist_ok=True)
    for path in tree:
        if path.startswith(config_dir + "/"):
            (directory / path.rpartition("/")[2]).write_bytes(tree[path].content)
    subprocess.run(
        ["postmap", "-c", str(directory), f"hash:{directory / 'virtual_mailbox_domains'}"],
        check=True,
    )
    return directory


def postconf(directory: Path, *args: str) -> str:
    out = subprocess.run(
        ["postconf", "-c", str(directory), *args], capture_output=True, text=True, check=True
    )
    assert out.stderr == "", out.stderr  # an unknown or unused parameter is a warning
    return out.stdout


def restrictions(directory: Path, name: str) -> list[str]:
    """The restrictions of a main.cf list, `$names` expanded, one entry per restriction (an
    entry with a table keeps its `{ ... }`)."""
    value = " ".join(postconf(directory, "-xh", name).split())
    entries, depth, current = [], 0, ""
    for ch in value + ",":
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            entries.append(current.strip())
            current = ""
        else:
            current += ch
    return [e for e in entries if e]


def lookup(directory: Path, key: str, table: str) -> str | None:
    """`postmap -q key table` (None when not found), as smtpd looks the key up."""
    out = subprocess.run(
        ["postmap", "-c", str(directory), "-q", key, table], capture_output=True, text=True
    )
    assert out.returncode in (0, 1), out.stderr
    return out.stdout.strip() if out.returncode == 0 else None


def table_of(restriction: str) -> str:
    """The table argument of `check_..._access TABLE`."""
    return restriction.split(" ", 1)[1]


def test_base_inventory_refuses_local_senders_after_trusted_networks(tmp_path: Path) -> None:
    inv = load_inventory(REPO / "inventory").inventory
    host = sorted(inv.hosts)[0]
    pf = write_postfix_dir(inv, host, tmp_path / "pf")
    postconf(pf, "-n")  # no warning: every parameter is known and used

    sender = restrictions(pf, "smtpd_sender_restrictions")
    assert sender[:2] == ["reject_non_fqdn_sender", "reject_unknown_sender_domain"]
    assert sender[2] == "permit_mynetworks"  # trusted networks (a webmail) keep their senders
    last = sender[-1]
    assert last.startswith("check_sender_access pipemap:{")
    assert len(sender) == 4  # no external_senders in the example inventory
    assert postconf(pf, "-h", "smtpd_restriction_classes").strip() == ""

    # The pipemap refuses every address of a served domain, and only those: not the domain's
    # subdomains, not an outside domain, not the null sender (bounces, notices).
    table = table_of(last)
    for domain in inv.domains:
        assert lookup(pf, domain, table) == REFUSAL
        assert lookup(pf, f"bounces.{domain}", table) is None
    assert lookup(pf, "outside.example", table) is None
    assert lookup(pf, "<>", table) is None
    assert "smtpd_access_maps" not in postconf(pf, "-h", "parent_domain_matches_subdomains")

    # Submission listeners keep their own sender rule (authenticated users as themselves).
    overrides = [
        line for line in postconf(pf, "-P").splitlines() if "/smtpd_sender_restrictions" in line
    ]
    assert len(overrides) == 3  # 587, 2525, 465 (port 25 has none)
    assert all(o.endswith("= $mailcfg_submission_sender_restrictions") for o in overrides)
    assert "reject_sender_login_mismatch" in postconf(
        pf, "-h", "mailcfg_submission_sender_restrictions"
    )


def make_inventory(**policy: Any) -> Inventory:
    """Two domains in the inventory, the host serves example.com only."""
    domains = {
        name: Domain(domain=name, accounts=[Account(name="a", password=H)])
        for name in ("example.com", "example.org")
    }
    host = HostSpec(
        address="192.0.2.1", hostname="mx.example.com", domains=["example.com"], policy=policy
    )
    return Inventory(hosts={"mx": host}, domains=domains)


def test_external_senders_let_only_their_networks_send_as_their_domain(tmp_path: Path) -> None:
    inv = make_inventory(
        external_senders=[
            {"domain": "example.com", "networks": ["203.0.113.0/24", "[2001:db8::]/32"]},
            {"domain": "example.org", "networks": ["198.51.100.0/24"]},  # not served here
        ]
    )
    pf = write_postfix_dir(inv, "mx", tmp_path / "pf")
    postconf(pf, "-n")

    assert postconf(pf, "-h", "smtpd_restriction_classes").split() == ["mailcfg_external_senders_1"]
    sender = restrictions(pf, "smtpd_sender_restrictions")
    assert sender[2] == "permit_mynetworks"
    # The switch comes before the refusal, and picks the class by the sender's domain alone.
    switch = sender[3]
    assert switch.startswith("check_sender_access inline:{")
    assert lookup(pf, "example.com", table_of(switch)) == "mailcfg_external_senders_1"
    assert lookup(pf, "example.org", table_of(switch)) is None
    assert lookup(pf, "sub.example.com", table_of(switch)) is None
    assert sender[4].startswith("check_sender_access pipemap:{")

    # The class permits a client of a listed network; any other client falls through.
    (client_check,) = restrictions(pf, "mailcfg_external_senders_1")
    assert client_check.startswith("check_client_access cidr:{")
    networks = table_of(client_check)
    assert lookup(pf, "203.0.113.77", networks) == "OK"
    assert lookup(pf, "2001:db8::25", networks) == "OK"
    assert lookup(pf, "203.0.114.1", networks) is None
    assert lookup(pf, "198.51.100.1", networks) is None
