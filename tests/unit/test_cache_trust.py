"""`mailcfg` on a hostile checkout: a committed `.mailcfg/cache/` full of pickles that would
write a marker file when loaded is never loaded by validate, render or plan (with the default
cache and with `--cache` pointing at it); the default cache lives outside the checkout; a cache
directory others could write, another user's or a symlink is not used (one warning line) and
the output is the same as with a good cache."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from compiler.cache.cachedir import default_cache_dir, find_cache_root
from compiler.cli import main
from compiler.load.inventory import LoadStats, load_inventory
from compiler.load.parsecache import DomainCache
from tests.forged_cache import Payload, forged_file

BASE = Path(__file__).parent / "bad_inventories" / "_base"
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An inventory checkout (the working directory, as in CI) and a private cache home."""
    root = tmp_path / "checkout"
    shutil.copytree(BASE, root)
    text = (root / "domains" / "example.com.yml").read_text()
    (root / "domains" / "example.org.yml").write_text(text.replace("example.com", "example.org"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    yield root


def plant_pickles(checkout: Path, marker: Path, forge: str) -> Path:
    """A committed `.mailcfg/cache/` (the old default) holding, under every name the stores
    read, a pickle that creates `marker` when loaded: plain (the old format), or in the new
    format with a tag made under a key the attacker chose. Returns the directory."""
    probe = checkout.parent / "probe"
    assert main(["validate", str(checkout), "--cache", str(probe)]) == 0
    keys = [
        DomainCache.open(probe).key(f.read_bytes())
        for f in sorted((checkout / "domains").glob("*.yml"))
    ]
    planted = checkout / ".mailcfg" / "cache"
    evil = pickle.dumps({key: Payload(marker) for key in keys})
    packs = sorted(probe.rglob("pack-*.pickle"))
    for pack in packs:
        where = planted / pack.parent.relative_to(probe)
        tag = pack.name.removeprefix("pack-").removesuffix(".pickle")
        names = [pack.name] + [f"loose-{tag}-{key}.pickle" for key in keys]
        where.mkdir(parents=True, exist_ok=True)
        for name in names:
            (where / name).write_bytes(forged_file(name, evil, forge))
    shutil.rmtree(probe)
    assert len(list(planted.rglob("*.pickle"))) == len(packs) * (1 + len(keys))
    return planted


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode))
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("forge", ["plain", "forged-tag"])
@pytest.mark.parametrize("use_planted", [False, True], ids=["default-cache", "cache-option"])
def test_a_committed_cache_is_never_loaded(
    checkout: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    forge: str,
    use_planted: bool,
) -> None:
    marker = tmp_path / "marker"
    planted = plant_pickles(checkout, marker, forge)
    before = snapshot(planted)
    option = ["--cache", ".mailcfg/cache"] if use_planted else []
    for _ in range(2):  # cold, then warm
        for argv in (["validate", "."], ["render", ".", "--out", "../out"], ["plan", "."]):
            code, out, err = run(capsys, *argv, *option)
            assert code == 0, err
            assert "warning" not in err
            assert argv[0] != "plan" or "=== mx1: " in out
            assert not marker.exists(), f"{argv}: a pickle from the checkout was loaded"
    if use_planted:
        # The directory was usable (ours, private enough): its files were misses, and the
        # store wrote its own over them, which a later run takes.
        assert snapshot(planted) != before
        stats = LoadStats()
        load_inventory(checkout, cache_dir=planted, stats=stats)
        assert stats.parsed == [] and len(stats.cached) == 2
    else:
        assert snapshot(planted) == before  # the default cache never looks there
    assert not marker.exists()


def test_the_default_cache_is_private_and_outside_the_checkout(
    checkout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "render", ".", "--out", "../out")[0] == 0
    assert not (checkout / ".mailcfg").exists()
    cache = default_cache_dir(checkout)
    assert cache.parent == find_cache_root() == checkout.parent / "xdg" / "mailcfg"
    for directory in (cache.parent, cache, *(p for p in cache.rglob("*") if p.is_dir())):
        st = directory.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [
            "fragments",
            "joined",
            "outdir",
            "templates",
            *(p.name for p in cache.glob("pack-*.pickle")),
        ]
    )
    stats = LoadStats()
    load_inventory(checkout, cache_dir=cache, stats=stats)
    assert len(stats.cached) == 2
    # Another inventory gets another directory, under the same key.
    assert default_cache_dir(checkout.parent / "other") != cache


def test_a_tampered_cache_entry_is_rebuilt(
    checkout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    assert run(capsys, "validate", ".")[0] == 0
    cache = default_cache_dir(checkout)
    (pack,) = cache.glob("pack-*.pickle")
    data = pack.read_bytes()
    evil = pickle.dumps({"x": Payload(marker)})
    pack.write_bytes(data[: -len(evil)] + evil)  # the tag kept, the pickle's end replaced
    stats = LoadStats()
    load_inventory(checkout, cache_dir=cache, stats=stats)
    assert len(stats.parsed) == 2 and not marker.exists()
    stats = LoadStats()
    load_inventory(checkout, cache_dir=cache, stats=stats)
    assert len(stats.cached) == 2


def unsafe_dir(kind: str, tmp_path: Path) -> Path:
    good = tmp_path / "good-target"
    good.mkdir(mode=0o700)
    bad = tmp_path / "bad"
    if kind == "symlink":
        bad.symlink_to(good)
        return bad
    bad.mkdir()
    if kind == "foreign":
        os.chown(bad, NOBODY, NOBODY)
        bad.chmod(0o755)
    else:
        bad.chmod(int(kind, 8))
    return bad


@pytest.mark.parametrize(
    "kind",
    ["0770", "0777", "0757", "symlink", pytest.param("foreign", marks=as_root)],
)
def test_an_unsafe_cache_dir_is_not_used_and_the_output_is_the_same(
    checkout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    out = tmp_path / "out"
    code, ref_out, ref_err = run(capsys, "render", ".", "--out", str(out))
    assert code == 0 and ref_err == ""
    reference = snapshot(out)
    bad = unsafe_dir(kind, tmp_path)
    target = bad.resolve()
    for _ in range(2):
        shutil.rmtree(out)
        code, got_out, got_err = run(capsys, "render", ".", "--out", str(out), "--cache", str(bad))
        assert code == 0
        (line,) = got_err.splitlines()
        assert line.startswith("mailcfg: warning: cache directory ") and "without a cache" in line
        assert got_out == ref_out and snapshot(out) == reference
        code, got_out, got_err = run(capsys, "validate", ".", "--cache", str(bad))
        assert code == 0 and got_out.startswith("ok: ") and len(got_err.splitlines()) == 1
    assert list(target.iterdir()) == []  # nothing written there
    if kind != "symlink":
        assert f"{stat.S_IMODE(bad.lstat().st_mode):04o}" == ("0755" if kind == "foreign" else kind)


@pytest.mark.parametrize("where", ["root", "inventory"])
def test_a_loose_default_dir_of_ours_is_tightened(
    checkout: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    cache = default_cache_dir(checkout)
    directory = cache.parent if where == "root" else cache
    directory.mkdir(parents=True)
    directory.chmod(0o777)
    code, _, err = run(capsys, "validate", ".")
    assert code == 0 and err == ""
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert list(cache.glob("pack-*.pickle"))


@as_root
@pytest.mark.parametrize("where", ["root", "inventory"])
def test_a_default_dir_of_another_user_is_not_used(
    checkout: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    cache = default_cache_dir(checkout)
    directory = cache.parent if where == "root" else cache
    directory.mkdir(parents=True, mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    code, out, err = run(capsys, "validate", ".")
    assert code == 0 and out.startswith("ok: ")
    (line,) = err.splitlines()
    assert f"cache directory {directory} is owned by uid {NOBODY}" in line
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # left alone
    assert not list(directory.rglob("*.pickle"))
