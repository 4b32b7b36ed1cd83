"""Lookup tables derived from the model (compiler.render.tables)."""

from __future__ import annotations

from compiler.render.resolve import resolve_host
from compiler.render.tables import PasswdEntry, make_tables, quota_rule
from schemas.domain import Account, Domain, Redirect
from schemas.inventory import HostSpec, Inventory

H = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"


def make_cfg(postmaster: str | None = None, **domain_kw: object):  # type: ignore[no-untyped-def]
    dom = Domain(domain="example.com", **domain_kw)  # type: ignore[arg-type]
    other = Domain(domain="example.org")
    policy = {"postmaster": postmaster} if postmaster else {}
    inv = Inventory(
        hosts={"mx": HostSpec(address="192.0.2.1", hostname="mx.example.com", policy=policy)},
        domains={"example.com": dom, "example.org": other},
    )
    return resolve_host(inv, "mx")


def test_mailbox_tables_list_enabled_accounts_only() -> None:
    cfg = make_cfg(
        accounts=[Account(name="b", password=H), Account(name="a", password=H, enabled=False)]
    )
    t = make_tables(cfg)
    assert t.virtual_mailbox_domains == (("example.com", "OK"), ("example.org", "OK"))
    assert t.virtual_mailbox_maps == (("b@example.com", "example.com/b/"),)
    assert t.sender_login_maps == (("b@example.com", "b@example.com"),)
    assert [e.user for e in t.passwd] == ["b@example.com"]


def test_redirects_and_postmaster_aliases() -> None:
    cfg = make_cfg(
        accounts=[Account(name="a", password=H)],
        redirects=[Redirect(name="sales", to=["a@example.com", "x@elsewhere.net"])],
    )
    rows = dict(make_tables(cfg).virtual_alias_maps)
    assert rows["sales@example.com"] == "a@example.com, x@elsewhere.net"
    # postmaster@ the first domain is the host's postmaster: it is not aliased to itself,
    # the other domain's postmaster goes to it.
    assert cfg.postmaster == "postmaster@example.com"
    assert "postmaster@example.com" not in rows
    assert rows["postmaster@example.org"] == "postmaster@example.com"


def test_declared_postmaster_is_not_aliased() -> None:
    cfg = make_cfg(
        postmaster="a@example.com",
        accounts=[Account(name="a", password=H), Account(name="postmaster", password=H)],
    )
    rows = dict(make_tables(cfg).virtual_alias_maps)
    assert "postmaster@example.com" not in rows  # an account of that name exists
    assert rows["postmaster@example.org"] == "a@example.com"


def test_passwd_lines_quota_and_protocol_denies() -> None:
    cfg = make_cfg(
        accounts=[
            Account(name="a", password=H, quota="1M"),
            Account(name="b", password=H, imap=False),
            Account(name="c", password=H, pop3=False, imap=False),
        ]
    )
    t = make_tables(cfg)
    assert [e.line() for e in t.passwd] == [
        f"a@example.com:{H}::::::userdb_quota_rule=*:storage=1048576B",
        f"b@example.com:{H}::::::",
        f"c@example.com:{H}::::::",
    ]
    assert t.deny_imap == ("b@example.com", "c@example.com")
    assert t.deny_pop3 == ("c@example.com",)


def test_quota_zero_is_unlimited() -> None:
    assert quota_rule(0) == ()
    assert quota_rule(5) == ("userdb_quota_rule=*:storage=5B",)


def test_passwd_entry_always_has_all_fields() -> None:
    # A two-field line would be a passdb-only entry: Dovecot's userdb rejects it.
    assert PasswdEntry("a@b.c", "{PLAIN-MD5}x").line().count(":") == 7
