"""CODEOWNERS from domain admins, relative to the git root (or the inventory's parent)."""

from __future__ import annotations

from pathlib import Path

from compiler.load.inventory import load_inventory
from compiler.tools.codeowners import HEADER, make_codeowners

MAIN = "hosts:\n  mx: {address: 127.0.0.1, hostname: mx.example.com}\n"


def make(root: Path) -> Path:
    inv = root / "ops" / "inventory"
    (inv / "domains").mkdir(parents=True)
    (inv / "mailcfg.yml").write_text(MAIN)
    (inv / "domains" / "b.test.yml").write_text('domain: b.test\nadmins: ["@bob", "@org/mail"]\n')
    (inv / "domains" / "a.test.yml").write_text('domain: a.test\nadmins: ["alice@a.test"]\n')
    (inv / "domains" / "c.test.yml").write_text("domain: c.test\n")
    return inv


def test_paths_are_relative_to_the_git_root(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    inv = make(tmp_path)
    text = make_codeowners(load_inventory(inv), inv)
    assert text == HEADER + (
        "/ops/inventory/domains/a.test.yml alice@a.test\n"
        "/ops/inventory/domains/b.test.yml @bob @org/mail\n"
    )


def test_without_git_paths_are_relative_to_the_inventory_parent(tmp_path: Path) -> None:
    inv = make(tmp_path)
    text = make_codeowners(load_inventory(inv), inv)
    assert "/inventory/domains/a.test.yml alice@a.test\n" in text
    assert "c.test" not in text  # no admins, no line


def test_example_inventory() -> None:
    repo = Path(__file__).resolve().parents[2]
    text = make_codeowners(load_inventory(repo / "inventory"), repo / "inventory")
    assert "/inventory/domains/example.com.yml @alice @mail-team\n" in text
