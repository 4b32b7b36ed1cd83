"""What the pack store refuses: files without a valid tag under the user's key are never
unpickled (a pickle is code), symlinks and other users' files are not followed or read, an
unsafe directory is neither read nor written, and the key itself is private and replaced when
it cannot be trusted. Real files, real pickles: a loaded bad pickle would write a marker."""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from compiler.cache.cachedir import KEY_NAME, find_cache_root, read_cache_key
from compiler.cache.packstore import MAGIC, TAG_SIZE, Codec, PackStore, open_pack_store

TAG = "0123456789abcdef"
PACK = f"pack-{TAG}.pickle"
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _as_str(stored: object) -> str | None:
    return stored if isinstance(stored, str) else None


def open_store(directory: Path) -> PackStore[str]:
    return open_pack_store(directory, TAG, Codec(decode=_as_str), max_loose=3)


def save(directory: Path, *keys: str) -> None:
    store = open_store(directory)
    for key in keys:
        store.put(key, key.upper())
    store.save()


class Payload:
    """Unpickling it creates `marker`: proof that the file was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def tagged(key: bytes, name: str, payload: bytes) -> bytes:
    """A file as the store writes it: magic, HMAC-SHA256 of name and payload, payload."""
    mac = hmac.new(key, name.encode() + b"\0" + payload, hashlib.sha256).digest()
    return MAGIC + mac + payload


@pytest.fixture
def key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache root for this test (so a fresh key)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mailcfg"


def test_files_carry_a_tag_under_the_users_key(tmp_path: Path, key_home: Path) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    data = (directory / PACK).read_bytes()
    payload = data[len(MAGIC) + TAG_SIZE :]
    assert data == tagged(read_cache_key(), PACK, payload)
    assert pickle.loads(payload) == {"a": "A"}
    # The key lives in the cache root, outside the store, private.
    key = key_home / KEY_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    assert KEY_NAME not in os.listdir(directory)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda name, p: p, id="plain-pickle"),
        pytest.param(lambda name, p: MAGIC + bytes(TAG_SIZE) + p, id="zero-tag"),
        pytest.param(lambda name, p: tagged(b"k" * 32, name, p), id="another-key"),
        pytest.param(lambda name, p: tagged(read_cache_key(), "other", p)[:-1], id="cut"),
    ],
)
def test_a_file_without_a_valid_tag_is_never_unpickled_and_is_rebuilt(
    tmp_path: Path, key_home: Path, forge: Any
) -> None:
    directory, marker = tmp_path / "s", tmp_path / "marker"
    save(directory, "a")
    save(directory, "b")  # a loose file for b
    evil = pickle.dumps({"a": Payload(marker), "b": Payload(marker)})
    loose = f"loose-{TAG}-b.pickle"
    for name in (PACK, loose):
        (directory / name).write_bytes(forge(name, evil))
    store = open_store(directory)
    assert store.get("a") is None and store.get("b") is None
    assert not marker.exists()
    store.put("a", "A")
    store.put("b", "B")
    store.save()
    fresh = open_store(directory)
    assert (fresh.get("a"), fresh.get("b")) == ("A", "B")
    assert not marker.exists()


def test_a_file_tagged_with_the_key_is_loaded(tmp_path: Path, key_home: Path) -> None:
    """The control of the test above: the tag is the one thing that stands in the way."""
    directory = tmp_path / "s"
    save(directory, "a")
    (directory / PACK).write_bytes(tagged(read_cache_key(), PACK, pickle.dumps({"a": "X"})))
    assert open_store(directory).get("a") == "X"
    # ... under its own name only: a valid pack renamed is a miss.
    (directory / PACK).rename(directory / "pack-fedcba9876543210.pickle")
    other = open_pack_store(directory, "fedcba9876543210", Codec(decode=_as_str), max_loose=3)
    assert other.get("a") is None


def test_a_changed_byte_is_a_miss_and_the_entry_is_rebuilt(tmp_path: Path, key_home: Path) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    data = bytearray((directory / PACK).read_bytes())
    data[data.index(b"A")] = ord("Z")  # the value "A" becomes "Z": still a valid pickle
    (directory / PACK).write_bytes(bytes(data))
    assert open_store(directory).get("a") is None
    save(directory, "a")
    assert open_store(directory).get("a") == "A"


def test_a_new_key_makes_every_entry_a_miss(tmp_path: Path, key_home: Path) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    (key_home / KEY_NAME).unlink()
    assert open_store(directory).get("a") is None


def test_symlinked_files_are_not_followed(tmp_path: Path, key_home: Path) -> None:
    directory, elsewhere = tmp_path / "s", tmp_path / "elsewhere"
    save(elsewhere, "a")  # a valid pack, under the same name, in another directory
    save(directory, "b")
    save(directory, "c")
    (directory / PACK).unlink()
    (directory / PACK).symlink_to(elsewhere / PACK)
    loose = directory / f"loose-{TAG}-c.pickle"
    loose.unlink()
    loose.symlink_to(elsewhere / PACK)
    store = open_store(directory)
    assert store.get("a") is None and store.get("c") is None
    before = (elsewhere / PACK).read_bytes()
    store.put("x", "X")
    store.save()
    # The links were replaced by files of the store, their target left as it was.
    assert not (directory / PACK).is_symlink()
    assert (elsewhere / PACK).read_bytes() == before
    assert open_store(elsewhere).get("a") == "A"


def test_a_fifo_in_place_of_the_pack_is_a_miss(tmp_path: Path, key_home: Path) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    (directory / PACK).unlink()
    os.mkfifo(directory / PACK)
    assert open_store(directory).get("a") is None  # and did not block on the FIFO


@as_root
def test_a_file_of_another_user_is_a_miss(tmp_path: Path, key_home: Path) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    os.chown(directory / PACK, NOBODY, NOBODY)
    assert open_store(directory).get("a") is None


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_directory_others_can_write_is_neither_read_nor_written(
    tmp_path: Path, key_home: Path, mode: int
) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    directory.chmod(mode)
    store = open_store(directory)
    assert store.get("a") is None
    store.put("b", "B")
    store.save()
    assert sorted(os.listdir(directory)) == [PACK]
    assert stat.S_IMODE(directory.stat().st_mode) == mode  # not someone else's to tighten


@as_root
def test_a_directory_of_another_user_is_neither_read_nor_written(
    tmp_path: Path, key_home: Path
) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    os.chown(directory, NOBODY, NOBODY)
    store = open_store(directory)
    assert store.get("a") is None
    store.put("b", "B")
    store.save()
    assert sorted(os.listdir(directory)) == [PACK]


def test_a_symlinked_directory_is_neither_read_nor_written(tmp_path: Path, key_home: Path) -> None:
    target, link = tmp_path / "target", tmp_path / "link"
    save(target, "a")
    link.symlink_to(target)
    store = open_store(link)
    assert store.get("a") is None
    store.put("b", "B")
    store.save()
    assert sorted(os.listdir(target)) == [PACK]


def test_missing_parents_are_made_private(tmp_path: Path, key_home: Path) -> None:
    save(tmp_path / "a" / "b" / "s", "x")
    for part in ("a", "a/b", "a/b/s"):
        assert stat.S_IMODE((tmp_path / part).stat().st_mode) == 0o700


@pytest.mark.parametrize("damage", ["readable", "short", "symlink", "directory"])
def test_a_key_that_cannot_be_trusted_is_replaced(
    tmp_path: Path, key_home: Path, damage: str
) -> None:
    directory = tmp_path / "s"
    save(directory, "a")
    key = key_home / KEY_NAME
    old = key.read_bytes()
    decoy = tmp_path / "decoy"
    decoy.write_bytes(old)
    if damage == "readable":
        key.chmod(0o644)  # others may have read it: entries tagged with it are not trusted
    elif damage == "short":
        key.write_bytes(old[:16])
    elif damage == "symlink":
        key.unlink()
        key.symlink_to(decoy)
    else:
        key.unlink()
        key.mkdir()
    if damage == "directory":
        # A directory cannot be replaced by a file: no key, so no cache (never an error).
        assert open_store(directory).get("a") is None
        return
    assert open_store(directory).get("a") is None
    assert not key.is_symlink() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() != old and len(key.read_bytes()) == 32
    assert decoy.read_bytes() == old  # a link's target is never written


def test_a_loose_cache_root_of_ours_is_tightened(tmp_path: Path, key_home: Path) -> None:
    key_home.mkdir(parents=True, mode=0o700)
    key_home.chmod(0o777)
    read_cache_key()
    assert stat.S_IMODE(key_home.stat().st_mode) == 0o700


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", "/nonexistent-home")
    assert find_cache_root() == Path("/nonexistent-home/.cache/mailcfg")
