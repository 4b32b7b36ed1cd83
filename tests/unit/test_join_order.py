"""The fragment join takes its row order from the tables the host was resolved with
(`ServedAccounts`' declaration order and sorting permutation) only when the fragments list
exactly those addresses in that order; the result is the one of looking every address up."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from compiler.load.inventory import load_inventory
from compiler.render.fragments import FragmentCache
from compiler.render.join import DomainSetCache, join_fragments
from compiler.render.resolve import ServedAccountsCache, index_domains, resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location(
    "bench_generate_join", ROOT / "bench/compile/generate.py"
)
assert _SPEC and _SPEC.loader
GENERATE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(GENERATE)
ROLES = load_roles(default_roles_dir())


def test_served_order_gives_the_looked_up_join(tmp_path: Path) -> None:
    inv = GENERATE.generate(tmp_path / "gen", domains=4, accounts=9, redirects=3)
    loaded = load_inventory(inv, cache_dir=tmp_path / "cache")
    inventory = loaded.inventory
    accounts = ServedAccountsCache()
    cfg = resolve_host(inventory, "mx1", role_defaults(ROLES), accounts)
    served = accounts.find(cfg)
    assert served is not None and served.mailboxes is cfg.mailboxes
    assert list(cfg.mailboxes) == sorted(served.declared_mailboxes)
    assert [served.declared_mailboxes[i] for i in served.mailbox_order] == list(cfg.mailboxes)
    assert [served.declared_redirects[i] for i in served.redirect_order] == list(cfg.redirects)
    fragments = FragmentCache.open(tmp_path / "fragments", inventory.domains, loaded.domain_keys)
    rows = [fragments.get(domain) for domain in cfg.domains]
    looked_up = join_fragments(cfg, rows)
    assert looked_up is not None
    assert join_fragments(cfg, rows, served) == looked_up
    # Fragments in another order than the declared one: the order is looked up again.
    assert join_fragments(cfg, rows[::-1], served) == join_fragments(cfg, rows[::-1])
    # A stale order (another permutation) is not used when the names do not match it.
    stale = dataclasses.replace(served, declared_mailboxes=served.declared_mailboxes[::-1])
    assert join_fragments(cfg, rows, stale) == looked_up
    # The session path (DomainSetCache with the accounts) renders the same.
    assert DomainSetCache(fragments, accounts).get(cfg) == looked_up


def test_a_config_not_resolved_from_the_cache_has_no_served_entry(tmp_path: Path) -> None:
    inv = GENERATE.generate(tmp_path / "gen", domains=2, accounts=3, redirects=1)
    inventory = load_inventory(inv).inventory
    accounts = ServedAccountsCache()
    cfg = resolve_host(inventory, "mx1", role_defaults(ROLES), accounts)
    copied = cfg.model_copy(update={"mailboxes": dict(cfg.mailboxes)})
    assert accounts.find(copied) is None
    assert ServedAccountsCache().find(cfg) is None
    assert index_domains(cfg.domains).mailboxes == cfg.mailboxes
