"""Lookup tables of a host: the row rules (compiler.render.tables) as the join lays them out."""

from __future__ import annotations

from compiler.render.join import make_domain_set_data
from compiler.render.resolve import HostConfig, resolve_host
from compiler.render.tables import TableTexts, passwd_line, quota_rule
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


def tables(cfg: HostConfig) -> TableTexts:
    return make_domain_set_data(cfg).tables


def rows(text: str) -> list[tuple[str, str]]:
    """A Postfix map's `key value` lines."""
    return [(key, value) for key, _, value in (line.partition(" ") for line in text.splitlines())]


def test_mailbox_tables_list_enabled_accounts_only() -> None:
    cfg = make_cfg(
        accounts=[Account(name="b", password=H), Account(name="a", password=H, enabled=False)]
    )
    t = tables(cfg)
    assert rows(t.virtual_mailbox_domains) == [("example.com", "OK"), ("example.org", "OK")]
    assert rows(t.virtual_mailbox_maps) == [("b@example.com", "example.com/b/")]
    assert rows(t.sender_login_maps) == [("b@example.com", "b@example.com")]
    assert [line.split(":")[0] for line in t.passwd.splitlines()] == ["b@example.com"]


def test_redirects_and_postmaster_aliases() -> None:
    cfg = make_cfg(
        accounts=[Account(name="a", password=H)],
        redirects=[Redirect(name="sales", to=["a@example.com", "x@elsewhere.net"])],
    )
    aliases = dict(rows(tables(cfg).virtual_alias_maps))
    assert aliases["sales@example.com"] == "a@example.com, x@elsewhere.net"
    # postmaster@ the first domain is the host's postmaster: it is not aliased to itself,
    # the other domain's postmaster goes to it.
    assert cfg.postmaster == "postmaster@example.com"
    assert "postmaster@example.com" not in aliases
    assert aliases["postmaster@example.org"] == "postmaster@example.com"


def test_declared_postmaster_is_not_aliased() -> None:
    cfg = make_cfg(
        postmaster="a@example.com",
        accounts=[Account(name="a", password=H), Account(name="postmaster", password=H)],
    )
    aliases = dict(rows(tables(cfg).virtual_alias_maps))
    assert "postmaster@example.com" not in aliases  # an account of that name exists
    assert aliases["postmaster@example.org"] == "a@example.com"


def test_passwd_lines_quota_and_protocol_denies() -> None:
    cfg = make_cfg(
        accounts=[
            Account(name="a", password=H, quota="1M"),
            Account(name="b", password=H, imap=False),
            Account(name="c", password=H, pop3=False, imap=False),
        ]
    )
    t = tables(cfg)
    assert t.passwd.splitlines() == [
        f"a@example.com:{H}::::::userdb_quota_rule=*:storage=1048576B",
        f"b@example.com:{H}::::::",
        f"c@example.com:{H}::::::",
    ]
    assert t.deny_imap == "b@example.com\nc@example.com\n"
    assert t.deny_pop3 == "c@example.com\n"


def test_quota_zero_is_unlimited() -> None:
    assert quota_rule(0) == ()
    assert quota_rule(5) == ("userdb_quota_rule=*:storage=5B",)


def test_passwd_entry_always_has_all_fields() -> None:
    # A two-field line would be a passdb-only entry: Dovecot's userdb rejects it.
    assert passwd_line("a@b.c", "{PLAIN-MD5}x", "").count(":") == 7
