"""Warm renders (parse cache, fragments, output manifest) equal cold ones after every kind of edit.

Each case renders a generated inventory, edits it, renders again into the same output
directory with the same cache, and compares the result byte for byte (and mode) with a render
from an empty cache into an empty directory. Cached parts must also be dropped when the code
that made them changes, and a hand-edited output file must be rewritten.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.load.inventory import load_inventory
from compiler.render import fragments as fragments_module
from compiler.render import outdir
from compiler.render.agentconfig import render_agent_config
from compiler.render.fragments import make_domain_fragment
from compiler.render.join import join_fragments, make_domain_set_data
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir
from compiler.types import FileTree, RenderedFile
from tests.reference_render import (
    dump_agent_config,
    make_agent_config,
    make_autoresponders,
    make_table_texts,
)
from tests.unit.benchedits import GENERATE, HASH, domain_file, replace_once

SIEVE = "mx1/etc/dovecot/autoreply/{}.sieve"


def _tree_of(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _render(inv: Path, out: Path, cache: Path, *extra: str) -> None:
    assert main(["render", str(inv), "--out", str(out), "--cache", str(cache), *extra]) == 0


def add_account(inv: Path) -> None:
    replace_once(
        domain_file(inv, 3),
        "accounts:\n",
        f'accounts:\n  - name: newcomer\n    password: "{HASH}"\n',
    )


def remove_account(inv: Path) -> None:
    f = domain_file(inv, 2)
    text = f.read_text()
    start = text.index("  - name: user001\n")
    end = text.index("  - name: user002\n")
    f.write_text(text[:start] + text[end:])


def add_cross_domain_alias(inv: Path) -> None:
    # user025@d0002 has an autoresponder and no alias in its own domain: a redirect in
    # another domain's file gives its script an `:addresses` entry (d0002's file unchanged).
    replace_once(
        domain_file(inv, 1),
        "redirects:\n",
        "redirects:\n  - {name: relay, to: [user025@d0002.bench.test]}\n",
    )


def add_cross_domain_chain(inv: Path) -> None:
    # d0001 → d0004 → d0002's responder, two hops over two other files.
    replace_once(
        domain_file(inv, 1),
        "redirects:\n",
        "redirects:\n  - {name: hop1, to: [hop2@d0004.bench.test]}\n",
    )
    replace_once(
        domain_file(inv, 4),
        "redirects:\n",
        "redirects:\n  - {name: hop2, to: [user025@d0002.bench.test]}\n",
    )


def change_whitelist(inv: Path) -> None:
    replace_once(
        domain_file(inv, 5),
        "entries: [friend@example.org",
        "entries: [pal@example.org, friend@example.org",
    )


def only_whitelisted(inv: Path) -> None:
    replace_once(
        domain_file(inv, 0),
        "      subject: Out of office\n",
        "      subject: Out of office\n      only_whitelisted: true\n",
    )


def change_policy(inv: Path) -> None:
    replace_once(inv / "mailcfg.yml", "per_hour: 200", "per_hour: 250")


def change_host_domains(inv: Path) -> None:
    replace_once(
        inv / "mailcfg.yml",
        "    groups: [frontline]\n    policy:",
        "    groups: [frontline]\n    domains: [d0001.bench.test, d0002.bench.test]\n    policy:",
    )


def remove_domain(inv: Path) -> None:
    domain_file(inv, 7).unlink()


EDITS: dict[str, Callable[[Path], None]] = {
    "account added": add_account,
    "account removed": remove_account,
    "cross-domain alias of a responder": add_cross_domain_alias,
    "cross-domain chain to a responder": add_cross_domain_chain,
    "whitelist changed": change_whitelist,
    "responder answers the whitelist only": only_whitelisted,
    "policy changed in mailcfg.yml": change_policy,
    "host serves fewer domains": change_host_domains,
    "domain file removed": remove_domain,
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_warm_render_after_an_edit_equals_a_cold_one(
    tmp_path: Path, edit: Callable[[Path], None]
) -> None:
    inv = GENERATE(tmp_path / "inv", domains=8, accounts=30, redirects=6)
    out, cache = tmp_path / "out", tmp_path / "cache"
    _render(inv, out, cache)
    _render(inv, out, cache)  # warm, nothing edited: the manifest now trusts older files
    before = _tree_of(out)
    edit(inv)
    _render(inv, out, cache)
    _render(inv, tmp_path / "cold", tmp_path / "fresh-cache")
    warm = _tree_of(out)
    assert warm == _tree_of(tmp_path / "cold")
    assert warm != before


def test_a_cross_domain_alias_reaches_the_script_and_goes_again(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "inv", domains=4, accounts=30, redirects=6)
    out, cache = tmp_path / "out", tmp_path / "cache"
    script = SIEVE.format("user025@d0002.bench.test")
    _render(inv, out, cache)
    original = (out / script).read_text()
    assert ":addresses" not in original
    add_cross_domain_alias(inv)
    _render(inv, out, cache)
    assert ':addresses ["relay@d0001.bench.test"]' in (out / script).read_text()
    replace_once(domain_file(inv, 1), "  - {name: relay, to: [user025@d0002.bench.test]}\n", "")
    _render(inv, out, cache)
    assert (out / script).read_text() == original


def test_changed_fragment_code_makes_every_fragment_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = GENERATE(tmp_path / "inv", domains=3, accounts=4, redirects=2)
    out, cache = tmp_path / "out", tmp_path / "cache"
    _render(inv, out, cache)
    (pack,) = (cache / "fragments").iterdir()
    # As after an edit of fragments.py, tables.py, agentconfig.py or sieve.py.
    monkeypatch.setattr(fragments_module, "code_fingerprint", lambda: "0" * 16)
    _render(inv, out, cache)
    assert [p.name for p in (cache / "fragments").iterdir()] == ["pack-" + "0" * 16 + ".pickle"]
    assert not pack.exists()


def test_a_changed_template_shows_in_a_warm_render(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "inv", domains=3, accounts=26, redirects=2)
    roles = tmp_path / "roles"
    shutil.copytree(default_roles_dir(), roles)
    out, cache = tmp_path / "out", tmp_path / "cache"
    _render(inv, out, cache, "--roles", str(roles))
    (roles / "dovecot/templates/sieve.j2").write_text("# edited\n{{ item.script }}")
    _render(inv, out, cache, "--roles", str(roles))
    scripts = list((out / "mx1/etc/dovecot/autoreply").iterdir())
    assert scripts and all(p.read_text().startswith("# edited\n") for p in scripts)


def _file(content: bytes) -> RenderedFile:
    return RenderedFile(path="", content=content, mode=0o644)


def test_manifest_skips_reading_untouched_files_and_catches_hand_edits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, manifest = tmp_path / "out", tmp_path / "cache" / "m.json"
    tree = FileTree({"/etc/a": _file(b"aaaa\n"), "/etc/b": _file(b"bbbb\n")})
    # Without the "racy" margin, files written a moment ago are trusted at once.
    monkeypatch.setattr(outdir, "_RACY_NS", 0)
    outdir.write_tree(tree, out, manifest)
    outdir.write_tree(tree, out, manifest)  # compares bytes once, records digests

    def no_reading(*args: object) -> bool:
        raise AssertionError("a file with a trusted record was read")

    with monkeypatch.context() as m:
        m.setattr(outdir, "_same_bytes", no_reading)
        ino = (out / "etc/a").stat().st_ino
        assert outdir.write_tree(tree, out, manifest) == 2
        assert (out / "etc/a").stat().st_ino == ino  # left alone
    # A hand edit of the same size, its mtime put back: the ctime still gives it away.
    st = (out / "etc/a").stat()
    (out / "etc/a").write_bytes(b"AAAA\n")
    os.utime(out / "etc/a", ns=(st.st_atime_ns, st.st_mtime_ns))
    outdir.write_tree(tree, out, manifest)
    assert (out / "etc/a").read_bytes() == b"aaaa\n"


def test_recent_records_are_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, manifest = tmp_path / "out", tmp_path / "cache" / "m.json"
    tree = FileTree({"/etc/a": _file(b"aaaa\n")})
    outdir.write_tree(tree, out, manifest)
    outdir.write_tree(tree, out, manifest)
    read: list[str] = []
    same_bytes = outdir._same_bytes

    def reading(dest: str, size: int, content: bytes) -> bool:
        read.append(dest)
        return same_bytes(dest, size, content)

    monkeypatch.setattr(outdir, "_same_bytes", reading)
    outdir.write_tree(tree, out, manifest)
    # Its ctime is within the racy margin of when the manifest was saved: read again.
    assert read == [str(out / "etc/a")]


def test_manifest_of_another_directory_is_ignored(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    tree = FileTree({"/a": _file(b"1\n")})
    outdir.write_tree(tree, tmp_path / "one", manifest)
    outdir.write_tree(FileTree({"/a": _file(b"2\n")}), tmp_path / "two", manifest)
    assert (tmp_path / "two/a").read_bytes() == b"2\n"
    manifest.write_text("{not json")
    assert outdir.write_tree(tree, tmp_path / "one", manifest) == 1
    assert outdir.manifest_path(tmp_path, tmp_path / "one") != outdir.manifest_path(
        tmp_path, tmp_path / "two"
    )


def test_joined_fragments_equal_the_model_path(tmp_path: Path) -> None:
    inv = GENERATE(tmp_path / "inv", domains=5, accounts=30, redirects=6)
    add_cross_domain_chain(inv)
    only_whitelisted(inv)
    inventory = load_inventory(inv).inventory
    for host in sorted(inventory.hosts):
        cfg = resolve_host(inventory, host)
        joined = join_fragments(cfg, [make_domain_fragment(d) for d in cfg.domains])
        assert joined is not None  # the domains' fragments fit the host
        assert joined == make_domain_set_data(cfg)  # and join like the host's own rows
        assert joined.tables == make_table_texts(cfg)
        assert list(joined.autoresponders) == make_autoresponders(cfg)
        assert any(":addresses" in s.script for s in joined.autoresponders)
        agent_json = render_agent_config(cfg, joined.agent_text)
        assert agent_json == dump_agent_config(make_agent_config(cfg))


def test_a_run_that_only_rewrites_files_leaves_the_manifest_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, manifest = tmp_path / "out", tmp_path / "cache" / "m.json"
    monkeypatch.setattr(outdir, "_RACY_NS", 0)
    tree = FileTree({"/etc/a": _file(b"aaaa\n"), "/etc/b": _file(b"bbbb\n")})
    outdir.write_tree(tree, out, manifest)
    outdir.write_tree(tree, out, manifest)  # records both
    saved = manifest.read_bytes()
    changed = FileTree({"/etc/a": _file(b"AAAAA\n"), "/etc/b": _file(b"bbbb\n")})
    outdir.write_tree(changed, out, manifest)
    # a's record stays, stale: its file's stat no longer matches it.
    assert manifest.read_bytes() == saved
    (out / "etc/a").write_bytes(b"XXXXX\n")  # same size, by hand
    outdir.write_tree(changed, out, manifest)
    assert (out / "etc/a").read_bytes() == b"AAAAA\n"
    assert manifest.read_bytes() == saved
    outdir.write_tree(changed, out, manifest)  # a compared by its bytes: recorded again
    assert manifest.read_bytes() != saved
