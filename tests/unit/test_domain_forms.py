"""Forward and keep a copy, catch-alls and alias domains: loaded from real YAML, checked with
their exact places, and rendered into the Postfix maps, main.cf, agent.json and Sieve."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from compiler.load.diagnostics import Diagnostic, InventoryError
from compiler.load.inventory import LoadedInventory, load_inventory
from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from compiler.render.sieve import invert_redirects, reaching_addresses
from compiler.types import FileTree
from schemas.agent import AgentConfig

BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
ROLES = load_roles(default_roles_dir())

MAIN = """\
schema_version: 1
hosts:
  mx:
    address: 127.0.0.1
    hostname: mx.example.com
  other:
    address: 127.0.0.2
    hostname: mx.example.org
    domains: [example.org]
"""

COM = f"""\
domain: example.com
accounts:
  - {{name: alice, password: "{BLF}", autoresponder: {{subject: Away, body: Gone}}}}
  - {{name: bob, password: "{BLF}", blacklist: {{enabled: true, entries: [spam@bad.test]}}}}
  - {{name: gone, password: "{BLF}", enabled: false}}
redirects:
  - {{name: alice, to: [alice@example.com, alice@gmail.example]}}
  - {{name: sales, to: bob@example.com}}
"""

ORG = f"""\
domain: example.org
catch_all: bob@example.com
accounts:
  - {{name: carol, password: "{BLF}"}}
  - {{name: dave, password: "{BLF}"}}
redirects:
  - {{name: dave, to: carol@example.org}}
"""


def write(root: Path, main: str = MAIN, **domains: str) -> Path:
    (root / "domains").mkdir(parents=True, exist_ok=True)
    (root / "mailcfg.yml").write_text(textwrap.dedent(main))
    for name, text in domains.items():
        (root / "domains" / f"{name.replace('_', '.')}.yml").write_text(textwrap.dedent(text))
    return root


def warnings_of(loaded: LoadedInventory) -> tuple[Diagnostic, ...]:
    """The load's warnings but the snakeoil one (these hosts keep Debian's default pair)."""
    return tuple(w for w in loaded.warnings if "snakeoil" not in w.message)


def errors_of(root: Path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_inventory(root)
    return [d.format().replace(f"{root}/", "") for d in info.value.diagnostics]


def render(root: Path, host: str = "mx") -> FileTree:
    loaded = load_inventory(root)
    assert warnings_of(loaded) == ()
    cfg = resolve_host(loaded.inventory, host, role_defaults(ROLES))
    return render_host(cfg, ROLES)


def text(tree: FileTree, name: str) -> str:
    (path,) = [p for p in tree if p.endswith("/" + name)]
    return tree[path].content.decode()


# --- forward and keep a copy ------------------------------------------------------------------


def test_keep_a_copy_loads_and_keeps_the_mailbox(tmp_path: Path) -> None:
    tree = render(write(tmp_path, example_com=COM, example_org=ORG))
    aliases = text(tree, "virtual_alias_maps").splitlines()
    assert "alice@example.com alice@example.com, alice@gmail.example" in aliases
    assert "alice@example.com example.com/alice/" in text(tree, "virtual_mailbox_maps")


def test_the_autoresponder_of_a_copy_keeper_does_not_list_itself() -> None:
    redirects = {
        "alice@example.com": ["alice@example.com", "alice@gmail.example"],
        "hello@example.com": ["alice@example.com"],
    }
    reverse = invert_redirects(redirects)
    assert reaching_addresses("alice@example.com", reverse) == ["hello@example.com"]


def test_keep_a_copy_of_a_disabled_account_is_an_error(tmp_path: Path) -> None:
    com = COM.replace(
        "  - {name: sales", "  - {name: gone, to: [gone@example.com, x@y.test]}\n  - {name: sales"
    )
    assert errors_of(write(tmp_path, example_com=com, example_org=ORG)) == [
        "domains/example.com.yml:8:23: error: redirects[1].to[0]: redirect gone@example.com "
        "names itself, but gone@example.com is no enabled account: mail to it would bounce (a "
        "redirect keeps a copy only in the mailbox of an enabled account of that address; drop "
        "it from `to`)"
    ]


def test_a_real_loop_beside_a_copy_is_still_a_loop(tmp_path: Path) -> None:
    com = COM.replace("to: bob@example.com}", "to: [bob@example.com, back@example.com]}")
    com += "  - {name: back, to: [sales@example.com]}\n"
    (error,) = errors_of(write(tmp_path, example_com=com, example_org=ORG))
    assert "redirect loop: back@example.com → sales@example.com → back@example.com" in error


# --- catch-all --------------------------------------------------------------------------------


def test_catch_all_rows_keep_accounts_and_redirects(tmp_path: Path) -> None:
    tree = render(write(tmp_path, example_com=COM, example_org=ORG))
    rows = text(tree, "virtual_alias_maps").splitlines()
    assert "@example.org bob@example.com" in rows
    assert "carol@example.org carol@example.org" in rows  # an account: its own row
    assert "dave@example.org carol@example.org" in rows  # a redirect keeps its row
    assert "dave@example.org dave@example.org" not in rows
    assert rows == sorted(rows, key=lambda r: r.split(" ")[0])
    assert not any(r.startswith("@example.com") for r in rows)  # no catch-all there
    agent = AgentConfig.model_validate_json(text(tree, "agent.json"))
    assert agent.catch_alls == {"example.org": "bob@example.com"}


def test_catch_all_to_a_dangling_local_address_is_an_error(tmp_path: Path) -> None:
    org = ORG.replace("catch_all: bob@example.com", "catch_all: nobody@example.com")
    assert errors_of(write(tmp_path, example_com=COM, example_org=org)) == [
        "domains/example.org.yml:2:12: error: catch_all: catch-all target nobody@example.com is "
        "in local domain example.com but is neither an enabled account nor a redirect there: "
        "every unknown address of example.org would be accepted and then bounce (backscatter); "
        "name an enabled account or a redirect"
    ]


def test_catch_all_may_point_outside_and_to_postmaster(tmp_path: Path) -> None:
    for target in ("someone@outside.example", "postmaster@example.org"):
        org = ORG.replace("catch_all: bob@example.com", f"catch_all: {target}")
        load_inventory(write(tmp_path, example_com=COM, example_org=org))


def test_a_loop_through_a_catch_all_names_it(tmp_path: Path) -> None:
    # x@example.org is unknown: the catch-all sends it to sales, which sends it back.
    org = ORG.replace("catch_all: bob@example.com", "catch_all: sales@example.com")
    com = COM.replace("to: bob@example.com}", "to: [x@example.org]}")
    (error,) = errors_of(write(tmp_path, example_com=com, example_org=org))
    assert (
        "redirect loop: sales@example.com → x@example.org (catch-all of example.org) → "
        "sales@example.com" in error
    )


def test_redirect_into_a_catch_all_domain_is_not_dangling(tmp_path: Path) -> None:
    com = COM.replace("to: bob@example.com}", "to: [whoever@example.org]}")
    assert warnings_of(load_inventory(write(tmp_path, example_com=com, example_org=ORG))) == ()


# --- alias domains ----------------------------------------------------------------------------

ALIASED = MAIN + "alias_domains:\n  example.net: example.com\n  example.info: example.org\n"


def test_alias_domain_rows_senders_and_main_cf(tmp_path: Path) -> None:
    tree = render(write(tmp_path, ALIASED, example_com=COM, example_org=ORG))
    rows = text(tree, "virtual_alias_maps").splitlines()
    for row in (
        "alice@example.net alice@example.com",
        "bob@example.net bob@example.com",
        "sales@example.net sales@example.com",
        "postmaster@example.net postmaster@example.com",
        "carol@example.info carol@example.org",
        "dave@example.info dave@example.org",
    ):
        assert row in rows
    assert not any(r.startswith(("gone@example.net", "@example.net")) for r in rows)
    assert len(rows) == len({r.split(" ")[0] for r in rows})  # one row per key
    senders = text(tree, "sender_login_maps").splitlines()
    assert "alice@example.net alice@example.com" in senders
    assert "sales@example.net sales@example.com" not in senders  # a redirect logs in nowhere
    assert senders == sorted(senders)
    main_cf = text(tree, "main.cf")
    assert "virtual_alias_domains = example.info, example.net\n" in main_cf
    assert "example.net" not in text(tree, "virtual_mailbox_domains")
    assert "{ example.net=553 5.7.1 not logged in;" in main_cf
    agent = AgentConfig.model_validate_json(text(tree, "agent.json"))
    assert agent.alias_domains == {"example.info": "example.org", "example.net": "example.com"}
    assert agent.local_domains == ["example.com", "example.info", "example.net", "example.org"]
    script = text(tree, "alice@example.com.sieve")
    assert ':addresses ["alice@example.net"]' in script


def test_alias_domain_is_served_with_its_target_only(tmp_path: Path) -> None:
    tree = render(write(tmp_path, ALIASED, example_com=COM, example_org=ORG), host="other")
    assert "virtual_alias_domains = example.info\n" in text(tree, "main.cf")
    assert "example.net" not in text(tree, "virtual_alias_maps")
    agent = json.loads(text(tree, "agent.json"))
    assert agent["alias_domains"] == {"example.info": "example.org"}


def test_no_alias_domains_no_catch_alls_leave_agent_json_as_it_was(tmp_path: Path) -> None:
    tree = render(write(tmp_path, example_com=COM, example_org=ORG.replace("catch_all", "#")))
    agent = json.loads(text(tree, "agent.json"))
    assert "alias_domains" not in agent and "catch_alls" not in agent
    assert "virtual_alias_domains" not in text(tree, "main.cf")


def test_alias_domain_mistakes_are_located(tmp_path: Path) -> None:
    main = MAIN + (
        "alias_domains:\n"
        "  example.org: example.com\n"  # a declared domain
        "  example.net: example.biz\n"  # no such domain
        "  example.info: example.net\n"  # an alias of an alias
    )
    assert errors_of(write(tmp_path, main, example_com=COM, example_org=ORG)) == [
        "mailcfg.yml:11:3: error: alias_domains.example.org: example.org is a domain of the "
        "inventory (domains/example.org.yml): an alias domain has no domain file; remove one of "
        "the two",
        "mailcfg.yml:12:16: error: alias_domains.example.net: unknown domain 'example.biz': "
        "there is no domains/example.biz.yml (an alias domain delivers as a domain of the "
        "inventory)",
        "mailcfg.yml:13:17: error: alias_domains.example.info: example.net is itself an alias "
        "domain (of example.biz): an alias must name a domain with a domain file; map "
        "example.info to example.biz directly",
    ]


def test_a_host_naming_an_alias_domain_is_told_where_it_is_served(tmp_path: Path) -> None:
    main = ALIASED.replace("domains: [example.org]", "domains: [example.org, example.info]")
    (error,) = errors_of(write(tmp_path, main, example_com=COM, example_org=ORG))
    assert "unknown domain 'example.info'" in error
    assert "example.info is an alias domain of example.org: it is served by the hosts" in error


def test_a_redirect_through_an_alias_domain_back_to_itself_is_a_loop(tmp_path: Path) -> None:
    com = COM.replace("to: bob@example.com}", "to: [sales@example.net]}")
    (error,) = errors_of(write(tmp_path, ALIASED, example_com=com, example_org=ORG))
    assert (
        "redirect loop: sales@example.com → sales@example.net (alias domain of example.com) → "
        "sales@example.com" in error
    )


def test_targets_in_an_alias_domain_are_checked_as_their_names(tmp_path: Path) -> None:
    com = COM.replace("to: bob@example.com}", "to: [bob@example.net, nobody@example.net]}")
    loaded = load_inventory(write(tmp_path, ALIASED, example_com=com, example_org=ORG))
    (warning,) = [w.format().replace(f"{tmp_path}/", "") for w in warnings_of(loaded)]
    assert warning.startswith("domains/example.com.yml:8:41: warning: redirects[1].to[1]: ")
    assert "nobody@example.net is in local domain example.net" in warning
