"""The parse cache: keyed by content, one edited file is the only one parsed again."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.load import parsecache
from compiler.load.diagnostics import InventoryError
from compiler.load.inventory import LoadStats, load_inventory
from compiler.load.parsecache import DomainCache

BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
MD5 = "{MD5-CRYPT}$1$/0FlUclv$hAvuorFl2DVrbFFfv3GLw/"
# The host names its certificate: Debian's snakeoil default is a warning of its own.
MAIN = (
    "hosts:\n  mx: {address: 127.0.0.1, hostname: mx.example.com, "
    "policy: {tls: {cert: /etc/ssl/mail/cert.pem, key: /etc/ssl/mail/key.pem}}}\n"
)


def domain(name: str, *accounts: str, password: str = BLF) -> str:
    lines = [f"domain: {name}", "accounts:"]
    lines += [f'  - {{name: {a}, password: "{password}"}}' for a in accounts]
    return "\n".join(lines) + "\n"


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    root = tmp_path / "inv"
    (root / "domains").mkdir(parents=True)
    (root / "mailcfg.yml").write_text(MAIN)
    for i in range(5):
        (root / "domains" / f"d{i}.test.yml").write_text(domain(f"d{i}.test", "a", "b"))
    return root


def run(inv: Path, cache: Path) -> LoadStats:
    stats = LoadStats()
    load_inventory(inv, cache_dir=cache, stats=stats)
    return stats


def names(files: list[str]) -> list[str]:
    return sorted(Path(f).name for f in files)


def test_second_run_takes_every_domain_from_the_cache(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run(inv, cache)
    assert len(first.parsed) == 5 and first.cached == []
    # A cold load writes one pack of the five entries, not a file per entry.
    assert [p.name.split("-")[0] for p in cache.glob("*.pickle")] == ["pack"]
    second = run(inv, cache)
    assert second.parsed == [] and len(second.cached) == 5


def test_editing_one_file_reparses_only_that_file(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(inv, cache)
    (inv / "domains" / "d3.test.yml").write_text(domain("d3.test", "a", "b", "c"))
    stats = LoadStats()
    loaded = load_inventory(inv, cache_dir=cache, stats=stats)
    assert names(stats.parsed) == ["d3.test.yml"]
    assert len(stats.cached) == 4
    assert [a.name for a in loaded.inventory.domains["d3.test"].accounts] == ["a", "b", "c"]


def test_cached_models_equal_freshly_validated_ones(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fresh = load_inventory(inv, cache_dir=cache).inventory
    cached = load_inventory(inv, cache_dir=cache).inventory
    assert cached == fresh
    assert cached.model_dump() == fresh.model_dump()


def test_cross_checks_run_on_cached_files(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(inv, cache)
    # A new file that clashes with a cached one: the clash is still found.
    (inv / "domains" / "d9.test.yml").write_text(domain("d9.test", "a@d0.test"))
    with pytest.raises(InventoryError) as info:
        load_inventory(inv, cache_dir=cache)
    messages = [d.message for d in info.value.diagnostics]
    assert any("declared twice" in m for m in messages)


def test_warnings_of_cached_files_are_reported_again(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (inv / "domains" / "d0.test.yml").write_text(domain("d0.test", "old", password=MD5))
    first = load_inventory(inv, cache_dir=cache)
    stats = LoadStats()
    second = load_inventory(inv, cache_dir=cache, stats=stats)
    assert len(stats.cached) == 5
    assert second.warnings == first.warnings
    assert [(w.file, w.line, w.col) for w in second.warnings] == [
        (str(inv / "domains" / "d0.test.yml"), 3, 27)
    ]


def test_invalid_files_are_not_cached(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(inv, cache)
    (inv / "domains" / "d0.test.yml").write_text("domain: d0.test\naccounts: [{name: a}]\n")
    for _ in range(2):
        stats = LoadStats()
        with pytest.raises(InventoryError):
            load_inventory(inv, cache_dir=cache, stats=stats)
        assert names(stats.parsed) == ["d0.test.yml"]


def test_damaged_cache_entry_is_a_miss(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(inv, cache)
    for entry in cache.glob("*.pickle"):
        entry.write_bytes(b"not a pickle")
    stats = run(inv, cache)
    assert len(stats.parsed) == 5
    assert len(run(inv, cache).cached) == 5


def test_key_depends_on_content_and_code_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DomainCache.open(tmp_path).fingerprint == DomainCache.open(tmp_path).fingerprint
    monkeypatch.setattr(parsecache, "code_fingerprint", lambda: b"code-1")
    a = DomainCache.open(tmp_path)
    monkeypatch.setattr(parsecache, "code_fingerprint", lambda: b"code-2")
    b = DomainCache.open(tmp_path)
    assert a.key(b"x") != a.key(b"y")
    assert a.key(b"x") != b.key(b"x")


def test_without_cache_dir_nothing_is_cached(inv: Path) -> None:
    stats = LoadStats()
    load_inventory(inv, stats=stats)
    load_inventory(inv, stats=stats)
    assert len(stats.parsed) == 10 and stats.cached == []


def test_unused_entries_are_pruned_when_they_pile_up(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for n in range(40):
        (inv / "domains" / "d0.test.yml").write_text(domain("d0.test", f"u{n}"))
        run(inv, cache)
        assert len(list(cache.glob("*.pickle"))) <= DomainCache.MAX_LOOSE + 1
    # Runs 1-33 left a pack and 32 loose files; run 34 packed the entries in use again.
    kinds = sorted(p.name.split("-")[0] for p in cache.glob("*.pickle"))
    assert kinds == ["loose"] * (40 - 34) + ["pack"]
    assert len(run(inv, cache).cached) == 5


def test_entries_of_removed_files_are_pruned_when_they_pile_up(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for i in range(5, 5 + DomainCache.MAX_LOOSE + 1):
        (inv / "domains" / f"d{i}.test.yml").write_text(domain(f"d{i}.test", "a"))
    run(inv, cache)
    (pack,) = cache.glob("pack-*.pickle")
    size = pack.stat().st_size
    for i in range(5, 5 + DomainCache.MAX_LOOSE):
        (inv / "domains" / f"d{i}.test.yml").unlink()
    run(inv, cache)  # as many unused entries as the limit: the pack stays
    assert pack.stat().st_size == size
    (inv / "domains" / f"d{5 + DomainCache.MAX_LOOSE}.test.yml").unlink()
    run(inv, cache)  # one more: packed again with the five files left
    assert [p.name.split("-")[0] for p in cache.glob("*.pickle")] == ["pack"]
    assert pack.stat().st_size < size
    assert len(run(inv, cache).cached) == 5


def test_an_edit_writes_one_small_file_and_reads_only_the_pack(inv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(inv, cache)
    pack = next(cache.glob("pack-*.pickle"))
    packed = pack.stat().st_mtime_ns, pack.stat().st_ino
    (inv / "domains" / "d3.test.yml").write_text(domain("d3.test", "a", "b", "c"))
    stats = run(inv, cache)
    assert names(stats.parsed) == ["d3.test.yml"]
    loose = sorted(cache.glob("loose-*.pickle"))
    assert len(loose) == 1
    assert (pack.stat().st_mtime_ns, pack.stat().st_ino) == packed  # not written again
    # The old entry of d3 stays in the pack (unused) and the new one is read from its file.
    again = LoadStats()
    loaded = load_inventory(inv, cache_dir=cache, stats=again)
    assert again.parsed == [] and len(again.cached) == 5
    assert [a.name for a in loaded.inventory.domains["d3.test"].accounts] == ["a", "b", "c"]
    # A damaged loose file is a miss too: d3 is parsed again, the others still come packed.
    loose[0].write_bytes(b"junk")
    third = run(inv, cache)
    assert names(third.parsed) == ["d3.test.yml"] and len(third.cached) == 4
    # ... and its file is written again.
    assert run(inv, cache).parsed == []


def test_a_changed_code_fingerprint_starts_a_new_pack(
    inv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    run(inv, cache)
    (old_pack,) = cache.glob("pack-*.pickle")
    # As after an edit of a schema or loader module (both are in the fingerprint).
    monkeypatch.setattr(parsecache, "code_fingerprint", lambda: b"other code")
    stats = run(inv, cache)
    assert len(stats.parsed) == 5 and stats.cached == []
    (new_pack,) = cache.glob("pack-*.pickle")
    assert new_pack != old_pack
    assert len(run(inv, cache).cached) == 5
