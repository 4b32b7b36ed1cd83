"""A joined base spliced after domain edits equals a full join of the edited inventory.

Each case renders the domain-set data of a generated inventory with a fragment cache (a full
join, which keeps its base), edits domain files, and takes the data again: the splice must
give exactly what the join of the host's own rows gives, and must be what ran (no full join)
where the module says it may; a redirect into another served domain must fall back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from compiler.load.inventory import load_inventory
from compiler.render import join as join_module
from compiler.render.agentconfig import render_agent_config
from compiler.render.fragments import FragmentCache
from compiler.render.join import DomainSetData, make_domain_set_data
from compiler.render.resolve import resolve_host
from tests.unit.benchedits import GENERATE, HASH, domain_file, replace_once


def _account(name: str, extra: str = "") -> str:
    return f'  - name: {name}\n    password: "{HASH}"\n{extra}'


def add_accounts(inv: Path) -> None:
    # Names that sort first, last and between the others' (aaa < user000 < zzz).
    for name in ("aaa", "user000a", "zzz"):
        replace_once(domain_file(inv, 3), "accounts:\n", "accounts:\n" + _account(name))


def remove_account(inv: Path) -> None:
    text = domain_file(inv, 2).read_text()
    start, end = text.index("  - name: user001\n"), text.index("  - name: user002\n")
    domain_file(inv, 2).write_text(text[:start] + text[end:])


def change_protocols_and_disable(inv: Path) -> None:
    replace_once(domain_file(inv, 1), "    quota: 2G\n", "    quota: 2G\n    imap: false\n")
    replace_once(domain_file(inv, 1), "    quota: 3G\n", "    quota: 3G\n    enabled: false\n")


def add_responder_and_postmaster(inv: Path) -> None:
    responder = "    autoresponder: {subject: Away, body: Back soon}\n"
    replace_once(
        domain_file(inv, 4), "accounts:\n", "accounts:\n" + _account("postmaster", responder)
    )


def change_redirects(inv: Path) -> None:
    replace_once(
        domain_file(inv, 5),
        "redirects:\n",
        "redirects:\n  - {name: abc, to: [user001@d0005.bench.test, x@outside.example]}\n",
    )
    replace_once(domain_file(inv, 6), "  - name: alias001\n", "  - name: alias001x\n")


def add_catch_all(inv: Path) -> None:
    replace_once(domain_file(inv, 0), "admins:", "catch_all: user002@d0000.bench.test\nadmins:")


def edit_many(inv: Path) -> None:
    add_accounts(inv)
    remove_account(inv)
    change_redirects(inv)
    add_catch_all(inv)


SPLICED: dict[str, Callable[[Path], None]] = {
    "accounts added": add_accounts,
    "account removed": remove_account,
    "imap refused, an account disabled": change_protocols_and_disable,
    "responder and postmaster account added": add_responder_and_postmaster,
    "redirects added and renamed": change_redirects,
    "catch-all added": add_catch_all,
    "several domains edited": edit_many,
}


def _data(inv: Path, cache: Path, host: str = "mx1") -> tuple[DomainSetData, DomainSetData]:
    """The host's data through the fragment cache (spliced if it can be), and joined from the
    host's own rows."""
    loaded = load_inventory(inv, cache_dir=cache / "parse")
    cfg = resolve_host(loaded.inventory, host)
    fragments = FragmentCache.open(
        cache / "fragments", loaded.inventory.domains, loaded.domain_keys, cache / "joined"
    )
    data = make_domain_set_data(cfg, fragments)
    fragments.save()
    full = make_domain_set_data(cfg)
    assert render_agent_config(cfg, data.agent_text) == render_agent_config(cfg, full.agent_text)
    return data, full


def _count_joins(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = join_module.join_fragments

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(join_module, "join_fragments", counted)
    return calls


@pytest.mark.parametrize("edit", SPLICED.values(), ids=SPLICED.keys())
def test_a_spliced_base_equals_a_full_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[Path], None]
) -> None:
    inv = GENERATE(tmp_path / "inv", domains=8, accounts=30, redirects=6)
    cache = tmp_path / "cache"
    first, fresh = _data(inv, cache)
    assert first == fresh
    assert len(list((cache / "joined").iterdir())) == 1  # the full join kept its base
    for _ in range(2):  # the second time, the new fragments come from their loose files
        edit(inv) if _ == 0 else None
        calls = _count_joins(monkeypatch)
        spliced, full = _data(inv, cache)
        monkeypatch.undo()
        assert spliced == full
        assert len(calls) == 1  # only the reference join of the host's rows: a splice ran
    assert spliced != first


def test_a_redirect_into_another_served_domain_is_joined_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = GENERATE(tmp_path / "inv", domains=4, accounts=30, redirects=6)
    cache = tmp_path / "cache"
    _data(inv, cache)
    replace_once(
        domain_file(inv, 1),
        "redirects:\n",
        "redirects:\n  - {name: r, to: [user025@d0002.bench.test]}\n",
    )
    calls = _count_joins(monkeypatch)
    spliced, full = _data(inv, cache)
    assert spliced == full
    assert len(calls) == 2  # the cache's full join too
    assert any(":addresses" in s.script for s in spliced.autoresponders)
    assert list((cache / "joined").iterdir()) == []  # no base to read for nothing again


def test_a_forged_or_damaged_base_is_a_full_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = GENERATE(tmp_path / "inv", domains=4, accounts=8, redirects=2)
    cache = tmp_path / "cache"
    _data(inv, cache)
    (base,) = (cache / "joined").iterdir()
    data = bytearray(base.read_bytes())
    data[-40] ^= 1  # inside the pickle: the tag no longer matches
    base.write_bytes(bytes(data))
    add_accounts(inv)
    calls = _count_joins(monkeypatch)
    spliced, full = _data(inv, cache)
    assert spliced == full
    assert len(calls) == 2
