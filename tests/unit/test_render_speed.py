"""The fast render paths render exactly what the plain ones do.

A cold render (empty cache) and a warm one (cached parses and per-domain fragments, one domain
file edited) give byte-identical trees; the joined tables, autoresponder scripts and agent.json,
from cached fragments or from a config's own rows (hand-built ones too), equal the plain
reference builders (tests/reference_render.py); `render --out` rewrites only changed files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from compiler.cli import main
from compiler.load.inventory import LoadStats, load_inventory
from compiler.render.agentconfig import ACCOUNT_KEYS, render_agent_config
from compiler.render.fragments import FragmentCache, make_domain_fragment
from compiler.render.join import DomainSetCache, make_domain_set_data
from compiler.render.outdir import write_tree
from compiler.render.render import render_host
from compiler.render.resolve import HostConfig, ServedAccountsCache, resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from compiler.types import FileTree, RenderedFile
from schemas.agent import AgentAccount, AgentConfig
from schemas.domain import Account, Autoresponder, SenderList
from tests.reference_render import (
    dump_agent_config,
    make_agent_config,
    make_autoresponders,
    make_table_texts,
)

ROOT = Path(__file__).resolve().parents[2]
ROLES = load_roles(default_roles_dir())


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOLDEN = _module(ROOT / "tests/golden/cases.py", "golden_cases_speed").CASES
GENERATE = _module(ROOT / "bench/compile/generate.py", "bench_generate_speed").generate


def _tree_of(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _render(inv: Path, out: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["render", str(inv), "--out", str(out), "--cache", str(cache)])
    captured = capsys.readouterr()
    assert code == 0, captured.err


def _edit(inv: Path) -> None:
    """An admin's commit to one domain: a new account with a whitelist, an autoresponder and
    its own limits, a protocol turned off, a new redirect to the new account."""
    f = inv / "domains" / "d0003.bench.test.yml"
    text = f.read_text()
    account = (
        "  - name: newcomer\n"
        '    password: "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"\n'
        "    imap: false\n"
        "    limits: {per_hour: 7}\n"
        "    whitelist: {enabled: true, entries: [a@example.org]}\n"
        "    autoresponder: {subject: Away, body: Back soon}\n"
    )
    text = text.replace("accounts:\n", "accounts:\n" + account, 1)
    redirect = "  - {name: hello, to: [newcomer@d0003.bench.test]}\n"
    text = text.replace("redirects:\n", "redirects:\n" + redirect, 1)
    f.write_text(text.replace("  - name: user001\n", "  - name: user001\n    pop3: false\n", 1))


def test_warm_render_after_an_edit_equals_a_cold_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = GENERATE(tmp_path / "inv", domains=12, accounts=30, redirects=6)
    cache = tmp_path / "cache"
    _render(inv, tmp_path / "first", cache, capsys)
    fragments = set((cache / "fragments").iterdir())
    assert [p.name.split("-")[0] for p in fragments] == ["pack"]
    _edit(inv)
    _render(inv, tmp_path / "warm", cache, capsys)
    _render(inv, tmp_path / "cold", tmp_path / "fresh-cache", capsys)
    warm, cold = _tree_of(tmp_path / "warm"), _tree_of(tmp_path / "cold")
    assert warm == cold
    assert warm != _tree_of(tmp_path / "first")
    assert "mx1/etc/dovecot/autoreply/newcomer@d0003.bench.test.sieve" in warm
    # The warm run made a fragment for the edited domain only and reused the other eleven.
    made = set((cache / "fragments").iterdir()) - fragments
    assert [p.name.split("-")[0] for p in made] == ["loose"]


def test_warm_load_reuses_unchanged_domain_files(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "inv", domains=5, accounts=4, redirects=2)
    load_inventory(inv, cache_dir=tmp_path / "cache")
    changed = inv / "domains" / "d0001.bench.test.yml"
    changed.write_text(changed.read_text().replace("quota: 2G", "quota: 3G", 1))
    stats = LoadStats()
    loaded = load_inventory(inv, cache_dir=tmp_path / "cache", stats=stats)
    assert [Path(p).name for p in stats.parsed] == ["d0001.bench.test.yml"]
    assert sorted(loaded.domain_keys) == sorted(loaded.inventory.domains)


def _golden_configs() -> list[HostConfig]:
    configs = []
    for make in GOLDEN.values():
        inv, host = make()
        configs.append(resolve_host(inv, host, role_defaults(ROLES)))
    return configs


def _generated_configs(tmp_path: Path) -> list[HostConfig]:
    inv = GENERATE(tmp_path / "gen", domains=6, accounts=26, redirects=5)
    loaded = load_inventory(inv)
    shared = ServedAccountsCache()
    return [
        resolve_host(loaded.inventory, host, role_defaults(ROLES), shared)
        for host in sorted(loaded.inventory.hosts)
    ]


def _agent_json(cfg: HostConfig, fragments: FragmentCache | None = None) -> str:
    return render_agent_config(cfg, make_domain_set_data(cfg, fragments).agent_text)


def _assert_renders_like_the_reference(
    cfg: HostConfig, fragments: FragmentCache | None = None
) -> None:
    data = make_domain_set_data(cfg, fragments)
    assert data.tables == make_table_texts(cfg), cfg.name
    assert list(data.autoresponders) == make_autoresponders(cfg), cfg.name
    text = render_agent_config(cfg, data.agent_text)
    assert text == dump_agent_config(make_agent_config(cfg)), cfg.name
    assert AgentConfig.model_validate_json(text) == make_agent_config(cfg), cfg.name


def test_joined_files_are_the_model_built_ones(tmp_path: Path) -> None:
    for cfg in [*_golden_configs(), *_generated_configs(tmp_path)]:
        _assert_renders_like_the_reference(cfg)


def test_agent_entry_layout_follows_the_schema() -> None:
    assert tuple(sorted(AgentAccount.model_fields)) == ACCOUNT_KEYS
    lists = [SenderList(), SenderList(enabled=True, entries=["a@example.org", "@example.net"])]
    for senders in lists:
        expected = json.dumps(senders.model_dump(mode="json"), sort_keys=True)
        assert json.dumps(senders.__dict__, sort_keys=True) == expected


def test_cached_fragments_render_like_fresh_ones(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "gen", domains=4, accounts=26, redirects=5)
    loaded = load_inventory(inv, cache_dir=tmp_path / "cache")
    domains = loaded.inventory.domains
    cfg = resolve_host(loaded.inventory, "mx1", role_defaults(ROLES))
    for made in (4, 0, 0):  # made and packed, then read back (twice: nothing to write)
        fragments = FragmentCache.open(tmp_path / "fragments", domains, loaded.domain_keys)
        for domain in domains.values():
            assert fragments.get(domain) == make_domain_fragment(domain)
        assert make_domain_set_data(cfg, fragments) == make_domain_set_data(cfg)
        _assert_renders_like_the_reference(cfg, fragments)
        assert len(fragments.store.made) == made
        fragments.save()
    assert len(list((tmp_path / "fragments").iterdir())) == 1


def test_fragment_files_are_packed_again_after_many_edits(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "gen", domains=3, accounts=2, redirects=1)
    directory = tmp_path / "fragments"
    domain_file = inv / "domains" / "d0001.bench.test.yml"
    original = domain_file.read_text()
    for quota in range(1, FragmentCache.MAX_LOOSE + 3):
        domain_file.write_text(original.replace("quota: 2G", f"quota: {quota}M", 1))
        loaded = load_inventory(inv, cache_dir=tmp_path / "cache")
        fragments = FragmentCache.open(directory, loaded.inventory.domains, loaded.domain_keys)
        for domain in loaded.inventory.domains.values():
            assert fragments.get(domain) == make_domain_fragment(domain)
        fragments.save()
        files = len(list(directory.iterdir()))
        assert files == min(quota, FragmentCache.MAX_LOOSE + 1) or quota > FragmentCache.MAX_LOOSE
    # The 66th run found 64 loose files: one pack again, of the fragments in use.
    assert [p.name.split("-")[0] for p in directory.iterdir()] == ["pack"]


def test_fragments_of_domains_not_rendered_survive_packing_again(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "gen", domains=4, accounts=2, redirects=1)
    directory = tmp_path / "fragments"
    loaded = load_inventory(inv, cache_dir=tmp_path / "cache")
    fragments = FragmentCache.open(directory, loaded.inventory.domains, loaded.domain_keys)
    for domain in loaded.inventory.domains.values():
        fragments.get(domain)
    fragments.save()
    domain_file = inv / "domains" / "d0001.bench.test.yml"
    original = domain_file.read_text()
    # Runs that render only the edited domain (as `--host` does), until the pack is new.
    for quota in range(1, FragmentCache.MAX_LOOSE + 2):
        domain_file.write_text(original.replace("quota: 2G", f"quota: {quota}M", 1))
        loaded = load_inventory(inv, cache_dir=tmp_path / "cache")
        domains = loaded.inventory.domains
        fragments = FragmentCache.open(directory, domains, loaded.domain_keys)
        fragments.get(domains["d0001.bench.test"])
        fragments.save()
    assert [p.name.split("-")[0] for p in directory.iterdir()] == ["pack"]
    fragments = FragmentCache.open(directory, domains, loaded.domain_keys)
    for domain in domains.values():
        assert fragments.get(domain) == make_domain_fragment(domain)
    assert fragments.store.made == {}


def test_hosts_share_derived_data_only_for_the_same_domains(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "gen", domains=3, accounts=6, redirects=2)
    text = (inv / "mailcfg.yml").read_text()
    mx2 = "    groups: [frontline]\n    policy:"
    (inv / "mailcfg.yml").write_text(text.replace(mx2, "    domains: [d0001.bench.test]\n" + mx2))
    loaded = load_inventory(inv)
    shared = ServedAccountsCache()
    mx1, mx2 = (
        resolve_host(loaded.inventory, h, role_defaults(ROLES), shared) for h in ("mx1", "mx2")
    )
    assert mx2.domain_names == ("d0001.bench.test",)
    cache = DomainSetCache()
    trees = [render_host(cfg, ROLES, cache) for cfg in (mx1, mx2)]
    assert len(cache.entries) == 2
    assert trees == [render_host(mx1, ROLES), render_host(mx2, ROLES)]


def test_a_hand_built_config_renders_its_own_mailboxes() -> None:
    inv, host = GOLDEN["full"]()
    cfg = resolve_host(inv, host, role_defaults(ROLES))
    kept = dict(list(cfg.mailboxes.items())[:2])
    other = cfg.model_copy(update={"mailboxes": kept, "limits": {a: cfg.limits[a] for a in kept}})
    users = render_host(other, ROLES)["/etc/dovecot/users"].content.decode()
    assert [line.split(":")[0] for line in users.splitlines()] == list(kept)
    _assert_renders_like_the_reference(other)
    reordered = cfg.model_copy(update={"limits": dict(reversed(cfg.limits.items()))})
    assert _agent_json(reordered) == dump_agent_config(make_agent_config(cfg))


def test_a_hand_built_config_with_rows_no_served_domain_declares(tmp_path: Path) -> None:
    """Rows out of address order, a responder of an unserved domain reached from a served
    one, a served domain's responder reached from the unserved one: from its own rows, also
    when a fragment cache of the inventory is at hand (its fragments do not fit)."""
    inv, host = GOLDEN["full"]()
    cfg = resolve_host(inv, host, role_defaults(ROLES))
    away = Autoresponder(subject="Gone", body="Elsewhere now.")
    outside = Account(name="x", password=cfg.mailboxes["bob@example.com"].password, imap=False)
    mailboxes = dict(reversed(cfg.mailboxes.items()))
    mailboxes["x@elsewhere.test"] = outside.model_copy(update={"autoresponder": away})
    redirects = dict(reversed(cfg.redirects.items()))
    redirects["hop@example.org"] = ("x@elsewhere.test",)
    redirects["y@elsewhere.test"] = ("alice@example.com",)
    limits = {a: cfg.limits.get(a, cfg.policy.limits) for a in mailboxes}
    other = cfg.model_copy(
        update={"mailboxes": mailboxes, "redirects": redirects, "limits": limits}
    )
    keys = {name: f"key-{name}" for name in inv.domains}
    fragments = FragmentCache.open(tmp_path / "fragments", inv.domains, keys)
    for cache in (None, fragments):
        _assert_renders_like_the_reference(other, cache)
    scripts = {s.address: s.script for s in make_domain_set_data(other).autoresponders}
    assert ':addresses ["hop@example.org"]' in scripts["x@elsewhere.test"]
    assert '"y@elsewhere.test"' in scripts["alice@example.com"]
    _assert_renders_like_the_reference(cfg, fragments)  # the inventory's own host: cached


def _file(content: bytes, mode: int = 0o644) -> RenderedFile:
    return RenderedFile(path="", content=content, mode=mode)


def test_write_tree_rewrites_only_changed_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tree = FileTree({"/etc/a": _file(b"a\n"), "/etc/b": _file(b"b\n"), "/etc/c": _file(b"c\n")})
    assert write_tree(tree, out) == 3
    (out / "stale").write_text("x")
    inodes = {p.name: p.stat().st_ino for p in (out / "etc").iterdir()}
    changed = FileTree(
        {"/etc/a": _file(b"a\n"), "/etc/b": _file(b"B\n"), "/etc/c": _file(b"c\n", 0o600)}
    )
    assert write_tree(changed, out) == 3
    after = {p.name: p.stat().st_ino for p in (out / "etc").iterdir()}
    assert after["a"] == inodes["a"]  # same bytes and mode: left alone
    assert after["b"] != inodes["b"] and (out / "etc/b").read_bytes() == b"B\n"
    assert after["c"] != inodes["c"] and (out / "etc/c").stat().st_mode & 0o777 == 0o600
    assert not (out / "stale").exists()
    assert sorted(os.listdir(out / "etc")) == ["a", "b", "c"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
