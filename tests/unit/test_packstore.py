"""The pack-file store under both compiler caches: hits, misses, damage, repacking, tags.
(What it refuses to load, and where it refuses to write: `test_packstore_trust.py`.)"""

from __future__ import annotations

import pickle
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from compiler.cache.packstore import MAGIC, TAG_SIZE, Codec, PackStore, open_pack_store

TAG = "0123456789abcdef"


def _as_str(stored: object) -> str | None:
    return stored if isinstance(stored, str) else None


STRINGS = Codec(decode=_as_str)


def open_store(directory: Path, tag: str = TAG, max_loose: int = 3) -> PackStore[str]:
    return open_pack_store(directory, tag, STRINGS, max_loose=max_loose)


def run(
    directory: Path, gets: Iterable[str], puts: Iterable[str] = (), **kw: Any
) -> PackStore[str]:
    """One run: get `gets`, put `puts` (value: the key in capitals), save."""
    store = open_store(directory, **kw)
    for key in gets:
        store.get(key)
    for key in puts:
        store.put(key, key.upper())
    store.save()
    return store


def kinds(directory: Path) -> list[str]:
    return sorted(p.name.split("-")[0] for p in directory.glob("*.pickle"))


def loose_path(directory: Path, key: str, tag: str = TAG) -> Path:
    return directory / f"loose-{tag}-{key}.pickle"


def test_a_cold_run_writes_one_pack_and_a_warm_run_reads_it(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    assert store.get("a") is None
    store.put("a", "A")
    store.put("b", "B")
    assert store.get("a") == "A"  # put entries are got back in the same run
    store.save()
    assert kinds(tmp_path / "s") == ["pack"]
    warm = open_store(tmp_path / "s")
    assert (warm.get("a"), warm.get("b"), warm.get("c")) == ("A", "B", None)
    assert warm.made == {} and set(warm.used) == {"a", "b"}


def test_a_new_directory_is_private(tmp_path: Path) -> None:
    open_store(tmp_path / "cache" / "s")
    assert stat.S_IMODE((tmp_path / "cache" / "s").stat().st_mode) == 0o700


def test_a_run_that_makes_nothing_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a", "b"])
    (pack,) = directory.iterdir()
    before = pack.stat().st_mtime_ns, pack.stat().st_ino
    run(directory, ["a", "b"])
    assert list(directory.iterdir()) == [pack]
    assert (pack.stat().st_mtime_ns, pack.stat().st_ino) == before


def test_an_entry_made_after_the_pack_gets_a_loose_file_read_only_when_asked(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a", "b"])
    run(directory, ["a", "b"], ["c"])
    assert kinds(directory) == ["loose", "pack"]
    store = open_store(directory)
    # The loose file is read at `get`, not at open: damaged now, it is a miss.
    loose_path(directory, "c").write_bytes(b"junk")
    assert store.get("a") == "A"
    assert store.get("c") is None


def test_a_damaged_pack_is_a_miss_for_every_entry_and_is_written_again(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a", "b"])
    (pack,) = directory.iterdir()
    for junk in (b"", b"junk", pickle.dumps(["a", "b"]), pickle.dumps({"a": 1, "b": 2})):
        pack.write_bytes(junk)
        store = run(directory, ["a", "b"], ["a", "b"])
        assert store.used == {"a": "A", "b": "B"}
        assert open_store(directory).get("a") == "A"  # the pack was written again


def test_a_damaged_loose_file_is_a_miss_and_is_written_again(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a"])
    run(directory, ["a"], ["b"])
    loose_path(directory, "b").write_bytes(pickle.dumps({"b": 42}))  # not a value: a miss
    store = open_store(directory)
    assert store.get("a") == "A" and store.get("b") is None
    store.put("b", "B")
    store.save()
    assert kinds(directory) == ["loose", "pack"]
    assert open_store(directory).get("b") == "B"


def test_a_loose_file_of_another_key_is_a_miss(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a"])
    run(directory, ["a"], ["b"])
    loose_path(directory, "b").rename(loose_path(directory, "c"))
    assert open_store(directory).get("c") is None


def test_entries_that_cannot_be_unpickled_or_decoded_are_misses(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a"])
    (pack,) = directory.iterdir()
    # A pickle naming a class that does not exist (as after a rename in the code).
    pack.write_bytes(b"cbuiltins\nNoSuchClass\n.")
    assert open_store(directory).get("a") is None

    def refuse(stored: object) -> str:
        raise ValueError(stored)

    run(directory, [], ["a"])
    assert open_pack_store(directory, TAG, Codec(decode=refuse), max_loose=3).get("a") is None


def test_loose_files_are_packed_again_past_the_limit(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["k0"], max_loose=3)
    for n in range(1, 4):
        run(directory, [f"k{n - 1}"], [f"k{n}"], max_loose=3)
        assert kinds(directory) == ["loose"] * n + ["pack"]
    # A fourth loose file would pass the limit: one pack of the entries in use instead.
    store = run(directory, ["k3"], ["k4"], max_loose=3)
    assert kinds(directory) == ["pack"]
    fresh = open_store(directory, max_loose=3)
    assert [fresh.get(f"k{n}") for n in range(5)] == [None, None, None, "K3", "K4"]
    assert set(store.used) == {"k3", "k4"}


def test_a_run_making_many_entries_at_once_packs_again(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a"], max_loose=3)
    run(directory, ["a"], ["b", "c", "d", "e"], max_loose=3)
    assert kinds(directory) == ["pack"]
    store = open_store(directory)
    assert [store.get(k) for k in "abcde"] == ["A", "B", "C", "D", "E"]


def test_too_many_unused_packed_entries_pack_again(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    keys = [f"k{n}" for n in range(8)]
    run(directory, [], keys, max_loose=3)
    (pack,) = directory.iterdir()
    before = pack.stat().st_ino
    run(directory, keys[:5], max_loose=3)  # three unused: not more than the limit
    assert pack.stat().st_ino == before
    run(directory, keys[:4], max_loose=3)  # four unused: the pack is written again
    assert pack.stat().st_ino != before
    store = open_store(directory)
    assert [store.get(k) for k in keys] == ["K0", "K1", "K2", "K3", None, None, None, None]


def test_kept_entries_survive_packing_again_without_being_got(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a", "b", "c", "d", "e"], max_loose=3)
    store = open_store(directory, max_loose=3)
    store.get("a")
    store.put("f", "F")
    # Without `keep`, b-e would be four unused entries: packed again with a and f only.
    store.save(keep=["b", "c", "d", "e"])
    assert kinds(directory) == ["loose", "pack"]
    store = open_store(directory, max_loose=3)
    store.get("a")
    store.put("g", "G")
    store.save(keep=["b", "c", "f", "x"])  # d and e unused: not more than the limit
    assert kinds(directory) == ["loose", "loose", "pack"]
    store = open_store(directory, max_loose=3)
    store.save(keep=["b", "f", "x"])  # a, c, d and e unused: packed again with b and f
    assert kinds(directory) == ["pack"]
    store = open_store(directory, max_loose=3)
    assert [store.get(k) for k in "abcdefg"] == [None, "B", None, None, None, "F", None]


def test_a_new_tag_starts_a_new_pack_and_removes_the_old_files(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a"])
    run(directory, ["a"], ["b"])
    other = open_store(directory, tag="fedcba9876543210")
    assert other.get("a") is None and other.get("b") is None
    other.put("a", "new")
    other.save()
    assert [p.name for p in directory.iterdir()] == ["pack-fedcba9876543210.pickle"]
    assert open_store(directory, tag="fedcba9876543210").get("a") == "new"
    assert open_store(directory).get("a") is None


def test_packing_again_leaves_other_files_and_directories_alone(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    run(directory, [], ["a"])
    (directory / "sub").mkdir()
    (directory / "sub" / "x.pickle").write_bytes(b"x")
    (directory / "notes.json").write_text("{}")
    run(directory, [], ["a"], tag="fedcba9876543210")
    assert sorted(p.name for p in directory.iterdir()) == [
        "notes.json",
        "pack-fedcba9876543210.pickle",
        "sub",
    ]
    assert (directory / "sub" / "x.pickle").exists()


class Secret:
    """A value its pickler hook replaces."""


def test_hooks_decide_what_is_pickled_and_how(tmp_path: Path) -> None:
    class RedactingPickler(pickle.Pickler):
        def reducer_override(self, obj: object) -> Any:
            return (str, ("redacted",)) if isinstance(obj, Secret) else NotImplemented

    codec: Codec[list[object]] = Codec(
        decode=lambda stored: list(stored) if isinstance(stored, tuple) else None,
        encode=tuple,
        pickler=RedactingPickler,
    )
    directory = tmp_path / "s"
    store = open_pack_store(directory, TAG, codec, max_loose=3)
    store.put("a", ["x", Secret()])
    store.save()
    (pack,) = directory.iterdir()
    assert pickle.loads(pack.read_bytes()[len(MAGIC) + TAG_SIZE :]) == {"a": ("x", "redacted")}
    assert open_pack_store(directory, TAG, codec, max_loose=3).get("a") == ["x", "redacted"]


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    store = open_pack_store(directory, TAG, Codec(decode=lambda s: s), max_loose=3)
    store.put("a", lambda: None)  # not picklable
    with pytest.raises((pickle.PicklingError, AttributeError)):
        store.save()
    assert list(directory.iterdir()) == []
