"""Cache of parsed and validated domain files, keyed by content hash.

An entry is the validated `Domain` plus the file's own warnings (already located), pickled in
a pack file with the other entries or in a small file of its own (see `DomainCache`). The key
hashes the file's bytes together with a fingerprint of the code that produced the entry (schema
and loader sources, pydantic and Python versions), so editing a schema invalidates every entry
and editing one domain file re-parses only that file.
Only files that validated cleanly are cached; cross-file checks always run.

The cache directory must be private to the user (it holds pickles, which are code when loaded).
"""

from __future__ import annotations

import contextlib
import copyreg
import hashlib
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydantic
from pydantic import BaseModel

import compiler
import schemas
from compiler.diagnostics import Diagnostic
from schemas.common import SCHEMA_VERSION
from schemas.domain import Domain

_FORMAT = b"mailcfg-domain-cache-3"
_SUFFIX = ".pickle"
_LOADER_MODULES = ("inventory.py", "yamlload.py", "validate.py", "parsecache.py")


@dataclass(frozen=True, slots=True)
class CachedDomain:
    domain: Domain
    warnings: tuple[Diagnostic, ...]  # `file` is left empty; the loader fills it in


def code_fingerprint() -> bytes:
    """Digest of everything that decides what a cache entry contains."""
    h = hashlib.sha256(_FORMAT)
    h.update(f"{SCHEMA_VERSION}|{pydantic.VERSION}|{sys.version_info[:2]}".encode())
    sources = sorted(Path(schemas.__file__).parent.glob("*.py"))
    compiler_dir = Path(compiler.__file__).parent
    sources += [compiler_dir / name for name in _LOADER_MODULES]
    for source in sources:
        h.update(source.name.encode())
        h.update(source.read_bytes())
    return h.digest()


def _read(path: Path) -> dict[str, CachedDomain]:
    """The entries stored in `path` ({} if missing or damaged: they are made again)."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, CachedDomain)}


def _write(directory: Path, path: Path, entries: dict[str, CachedDomain]) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            _ModelPickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(entries)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(slots=True)
class DomainCache:
    """The entries of one cache directory, for one load.

    On disk: one pack file with the entries in use when it was written, plus one small
    "loose" file per entry made since (opening and unpickling a thousand small files costs
    more than one pack holding them all, and writing the pack again after every edit would
    cost more still). Entries are written by `save`, at the end of a load: a cold load
    writes one pack; a load after one edit writes one loose file. Once there are more than
    `MAX_LOOSE` loose files, or as many unused entries in the pack, `save` writes a new pack
    of the entries used by that load and removes every other file."""

    directory: Path
    fingerprint: bytes
    packed: dict[str, CachedDomain] = field(default_factory=dict)
    loose: set[str] = field(default_factory=set)  # keys of the loose files
    used: dict[str, CachedDomain] = field(default_factory=dict)
    made: dict[str, CachedDomain] = field(default_factory=dict)

    MAX_LOOSE = 32

    @classmethod
    def open(cls, directory: Path) -> DomainCache:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cache = cls(directory, code_fingerprint())
        cache.packed = _read(cache._pack_path())
        prefix = cache._loose_prefix()
        with os.scandir(directory) as entries:
            cache.loose = {
                e.name[len(prefix) : -len(_SUFFIX)]
                for e in entries
                if e.name.startswith(prefix) and e.name.endswith(_SUFFIX)
            }
        return cache

    def _tag(self) -> str:
        return self.fingerprint.hex()[:16]

    def _pack_path(self) -> Path:
        return self.directory / f"pack-{self._tag()}{_SUFFIX}"

    def _loose_prefix(self) -> str:
        return f"loose-{self._tag()}-"

    def key(self, data: bytes) -> str:
        return hashlib.sha256(self.fingerprint + data).hexdigest()

    def get(self, key: str) -> CachedDomain | None:
        """The entry for `key`, or None (also for a damaged entry: it is made again)."""
        entry = self.packed.get(key)
        if entry is None and key in self.loose:
            entry = _read(self.directory / f"{self._loose_prefix()}{key}{_SUFFIX}").get(key)
        if entry is not None:
            self.used[key] = entry
        return entry

    def put(self, key: str, entry: CachedDomain) -> None:
        """Store `entry` (on disk at `save`)."""
        self.made[key] = entry
        self.used[key] = entry

    def save(self) -> None:
        """Write the entries made by this load (see the class docstring)."""
        unused = len(self.packed.keys() - self.used.keys())
        new_loose = self.made.keys() - self.loose
        if not new_loose and unused <= self.MAX_LOOSE:
            return
        if self.packed and len(self.loose | new_loose) <= self.MAX_LOOSE:
            for key in new_loose:
                path = self.directory / f"{self._loose_prefix()}{key}{_SUFFIX}"
                _write(self.directory, path, {key: self.made[key]})
            return
        pack = self._pack_path()
        _write(self.directory, pack, self.used)
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path != pack:
                with contextlib.suppress(OSError):
                    path.unlink()


_set_attribute = object.__setattr__
# pickle writes a reduce value starting with copyreg.__newobj__ as its NEWOBJ opcode (C).
_NEWOBJ: Any = copyreg.__newobj__  # type: ignore[attr-defined]


def _set_model_state(model: BaseModel, state: tuple[dict[str, object], set[str]]) -> None:
    """Fill a model made by pickle's NEWOBJ without validating again (what `model_construct`
    does, minus defaults): the values were validated when the entry was written."""
    values, fields_set = state
    _set_attribute(model, "__dict__", values)
    _set_attribute(model, "__pydantic_fields_set__", fields_set)
    _set_attribute(model, "__pydantic_extra__", None)
    _set_attribute(model, "__pydantic_private__", None)


class _ModelPickler(pickle.Pickler):
    """Pickles plain pydantic models as (class, field values, fields set), restored by
    `_set_model_state`: a few attribute sets per model instead of pydantic's generic
    `__setstate__`, several times faster. Frozen models with equal fields sets share one set
    object (pickle stores it once): nothing mutates the fields set of a frozen model
    (`model_copy` copies it first), and 50,000 accounts load a third faster."""

    def __init__(self, file: BinaryIO, protocol: int) -> None:
        super().__init__(file, protocol=protocol)
        self._fields_sets: dict[frozenset[str], set[str]] = {}

    def reducer_override(self, obj: object) -> Any:
        if (
            isinstance(obj, BaseModel)
            and obj.__pydantic_extra__ is None
            and obj.__pydantic_private__ is None
        ):
            fields_set = obj.__pydantic_fields_set__
            if obj.model_config.get("frozen"):
                fields_set = self._fields_sets.setdefault(frozenset(fields_set), fields_set)
            state = (obj.__dict__, fields_set)
            return (_NEWOBJ, (type(obj),), state, None, None, _set_model_state)
        return NotImplemented
