"""On-disk store of pickled entries by key: one pack file plus one small "loose" file per entry.

Both caches of the compiler keep their entries here: the parse cache (`compiler.load.parsecache`,
validated domain files) and the render fragments (`compiler.render.fragments`, per-domain rows).

On disk, in one directory private to the user, under a tag (a digest of the code that made
the entries, so changed code starts a new pack and never reads an old one):

- `pack-<tag>.pickle`: a dict of the entries in use when it was written;
- `loose-<tag>-<key>.pickle`: a dict of one entry, made after the pack was written.

Opening and unpickling a thousand small files costs more than one pack holding them all, and
writing the pack again after every edit would cost more still: so a cold run writes one pack,
a run after one edit writes one loose file, and a warm run reads the pack and only the loose
files of the keys it asks for. Once there are more than `max_loose` loose files, or as many
unused entries in the pack (left by edits and removed files), `save` writes a new pack of the
entries in use and removes every other file of the directory.

Writes are atomic (a temporary file renamed into place), so a reader sees a whole file or
none. A missing, damaged or foreign file or entry is a miss (made again), never an error.

Pickles are code when loaded, and a cache directory may hold files nobody trusted wrote (e.g.
`--cache` pointing into a checkout). So every file carries an HMAC-SHA256 of its name and
pickled bytes under the user's key (`compiler.cache.cachedir`, kept outside every cache directory),
checked before anything is unpickled: a file without a valid tag is a miss, never loaded.
Files are opened without following symlinks and used only if they are regular files of ours.
The directory itself is checked (`compiler.cache.cachedir.prepare_cache_dir`); an unsafe one, or no
key, gives a store that reads and writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

from compiler.cache.cachedir import CacheError, prepare_cache_dir, read_cache_key

V = TypeVar("V")

_SUFFIX = ".pickle"
MAGIC = b"mailcfg-cache-1\n"  # then the tag, then the pickle
TAG_SIZE = hashlib.sha256().digest_size
_HEADER = len(MAGIC) + TAG_SIZE
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _same(value: object) -> object:
    return value


@dataclass(frozen=True, slots=True)
class Codec(Generic[V]):
    """How a store's values go to disk and come back.

    `encode` turns a value into what is pickled (e.g. a plain tuple, which pickle restores
    without a Python call), `pickler` pickles a file's dict of encoded values at once, and
    `decode` turns what was read back into a value, or None (or raises) if it is not one."""

    decode: Callable[[object], V | None]
    encode: Callable[[V], object] = _same
    pickler: type[pickle.Pickler] = pickle.Pickler


@dataclass(slots=True)
class PackStore(Generic[V]):
    """The entries of one store directory, for one run: `get` and `put` during the run, then
    `save` once at its end (see the module docstring). Keys must be file-name safe (they name
    the loose files): hex digests. Without a `directory` (it was unsafe) it stores nothing."""

    directory: Path | None
    key: bytes  # authenticates the files (`compiler.cache.cachedir.read_cache_key`)
    tag: str
    codec: Codec[V]
    max_loose: int
    loose: set[str]  # keys of the loose files
    used: dict[str, V] = field(default_factory=dict)  # got or put by this run
    made: dict[str, V] = field(default_factory=dict)  # put by this run
    _packed: dict[object, object] | None = None  # the pack's entries once read (`packed`)
    _peeked: bool = False  # `peek` was used: `save` may leave counting the pack to later

    @property
    def packed(self) -> dict[object, object]:
        """The pack's entries, as read (decoded on first `get`): read on first need, so a run
        that only `peek`s never pays for a large pack."""
        if self._packed is None:
            self._packed = (
                {} if self.directory is None else read_tagged(self._pack_path(), self.key)
            )
        return self._packed

    def get(self, key: str) -> V | None:
        """The entry for `key`, or None (also for a damaged entry: it is made again)."""
        return self._lookup(key, with_pack=True)

    def peek(self, key: str) -> V | None:
        """As `get`, from this run's entries and the loose files only: never reads the pack
        (a key that only the pack holds is None, and made again by the caller)."""
        self._peeked = True
        return self._lookup(key, with_pack=False)

    def _lookup(self, key: str, *, with_pack: bool) -> V | None:
        value = self.used.get(key)
        if value is None:
            if with_pack:
                value = self._decode(self.packed.get(key))
            if value is None and key in self.loose and self.directory is not None:
                value = self._decode(read_tagged(self._loose_path(key), self.key).get(key))
            if value is not None:
                self.used[key] = value
        return value

    def put(self, key: str, value: V) -> None:
        """Store `value` under `key` (on disk at `save`)."""
        self.made[key] = value
        self.used[key] = value

    def save(self, keep: Iterable[str] = ()) -> None:
        """Write the entries put by this run. The entries in use, should the pack be written
        again, are those got or put by this run and those of `keep` that are stored."""
        if self.directory is None:
            return
        if self._packed is None and self._peeked and self._pack_path().is_file():
            # Only `peek`ed: the pack's unused entries are counted by a later run that reads it.
            if not self.made:
                return
            if len(self.loose | self.made.keys()) <= self.max_loose:
                self._write_loose()
                return
        kept = set(keep)
        unused = len(self.packed.keys() - self.used.keys() - kept)
        if unused <= self.max_loose:
            if not self.made:
                return
            # A made key may already have a loose file: a damaged one, written again.
            if self.packed and len(self.loose | self.made.keys()) <= self.max_loose:
                self._write_loose()
                return
        entries = dict(self.used)
        for key in kept - entries.keys():
            found = self._lookup(key, with_pack=True)
            if found is not None:
                entries[key] = found
        pack = self._pack_path()
        self._write(pack, {key: self.codec.encode(value) for key, value in entries.items()})
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path != pack:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _write_loose(self) -> None:
        for key, value in self.made.items():
            self._write(self._loose_path(key), {key: self.codec.encode(value)})

    def _decode(self, stored: object) -> V | None:
        if stored is None:
            return None
        try:
            return self.codec.decode(stored)
        except Exception:  # a foreign or damaged entry can fail in any way: it is a miss
            return None

    def _pack_path(self) -> Path:
        assert self.directory is not None
        return self.directory / f"pack-{self.tag}{_SUFFIX}"

    def _loose_path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"loose-{self.tag}-{key}{_SUFFIX}"

    def _write(self, path: Path, data: dict[str, object]) -> None:
        write_tagged(path, self.key, data, self.codec.pickler)


def write_tagged(
    path: Path, key: bytes, data: dict[str, object], pickler: type[pickle.Pickler] = pickle.Pickler
) -> None:
    """Write `data` pickled to `path` atomically, tagged with an HMAC under `key`, bound to
    the file's name (`read_tagged` checks it before unpickling)."""
    mac = _start_tag(key, path.name)
    # mkstemp: a new file (O_EXCL, O_NOFOLLOW, 0600); the rename replaces a symlink at
    # `path` instead of writing through it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + bytes(TAG_SIZE))  # the tag, once the pickle is written
            # Pickled straight into the file through the MAC, as fast as a plain dump:
            # no copy of the whole pickle in memory.
            pickler(_Tagging(f, mac), protocol=pickle.HIGHEST_PROTOCOL).dump(data)
            f.seek(len(MAGIC))
            f.write(mac.digest())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True, slots=True)
class _Tagging:
    """A file to pickle into that also feeds what is written to a MAC."""

    file: BinaryIO
    mac: hmac.HMAC

    def write(self, data: bytes) -> int:
        self.mac.update(data)
        return self.file.write(data)


def open_pack_store(directory: Path, tag: str, codec: Codec[V], *, max_loose: int) -> PackStore[V]:
    """The store in `directory` (made private to the user if new) for entries tagged `tag`:
    its pack read, its loose files listed. If the directory is not safe to use (or there is
    no key), a store that reads and writes nothing."""
    try:
        prepare_cache_dir(directory, tighten=False)
        key = read_cache_key()
        prefix = f"loose-{tag}-"
        with os.scandir(directory) as entries:
            loose = {
                e.name[len(prefix) : -len(_SUFFIX)]
                for e in entries
                if e.name.startswith(prefix) and e.name.endswith(_SUFFIX)
            }
    except (CacheError, OSError):
        return PackStore(None, b"", tag, codec, max_loose, set())
    return PackStore(directory, key, tag, codec, max_loose, loose)


def _start_tag(key: bytes, name: str) -> hmac.HMAC:
    """The HMAC of a file, fed its pickled bytes next. Bound to the file's name, so no valid
    file can stand in for another (another key's loose file, another tag's pack)."""
    return hmac.new(key, name.encode() + b"\0", hashlib.sha256)


def read_tagged(path: Path, key: bytes) -> dict[object, object]:
    """The dict pickled in `path` ({} if missing, damaged, not a regular file of ours, or
    without a valid tag: its entries are made again). Nothing is unpickled before its tag
    is checked."""
    try:
        fd = os.open(path, _READ_FLAGS)  # O_NOFOLLOW: a symlink fails (ELOOP)
    except OSError:
        return {}
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return {}
        # Read once into a buffer of the file's size: faster than read() for a large pack.
        data = bytearray(st.st_size)
        body = memoryview(data)
        size = 0
        while size < len(data):
            count = f.readinto(body[size:])
            if not count:
                break
            size += count
    head, tag, payload = body[: len(MAGIC)], body[len(MAGIC) : _HEADER], body[_HEADER:size]
    if head != MAGIC or size < _HEADER:
        return {}
    mac = _start_tag(key, path.name)
    mac.update(payload)
    if not hmac.compare_digest(tag, mac.digest()):
        return {}
    try:
        loaded = pickle.loads(payload)
    except Exception:  # our own file, damaged in a way the tag cannot tell (a stale class)
        return {}
    return loaded if isinstance(loaded, dict) else {}
