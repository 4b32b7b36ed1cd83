"""Cache of parsed and validated domain files, keyed by content hash.

An entry is the validated `Domain` plus the file's own warnings (already located), kept in a
`compiler.cache.packstore` store (one pack file plus a small file per entry made since). The key
hashes the file's bytes together with a fingerprint of the code that produced the entry (schema
and loader sources, pydantic and Python versions), so editing a schema invalidates every entry
and editing one domain file re-parses only that file.
Only files that validated cleanly are cached; cross-file checks always run.

Entries are pickles, which are code when loaded: `compiler.cache.packstore` loads only files tagged
with the user's key (`compiler.cache.cachedir`), so nothing another user or a checkout put in the
cache directory is ever unpickled.
"""

from __future__ import annotations

import copyreg
import hashlib
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import BaseModel

import compiler
import schemas
from compiler.cache.packstore import Codec, PackStore, open_pack_store
from compiler.load.diagnostics import Diagnostic
from schemas.common import SCHEMA_VERSION
from schemas.domain import Domain

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

_FORMAT = b"mailcfg-domain-cache-3"
_LOADER_MODULES = (
    "load/inventory.py",
    "load/yamlload.py",
    "load/yamlslow.py",
    "load/validate.py",
    "load/parsecache.py",
    "cache/packstore.py",
)


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


@dataclass(frozen=True, slots=True)
class DomainCache:
    """The entries of one cache directory, for one load: `get` and `put` while loading,
    `save` at the end (a cold load writes one pack; a load after one edit writes one small
    file; see `compiler.cache.packstore` for when the pack is written again)."""

    fingerprint: bytes
    store: PackStore[CachedDomain]

    MAX_LOOSE = 32

    @classmethod
    def open(cls, directory: Path) -> DomainCache:
        fingerprint = code_fingerprint()
        tag = fingerprint.hex()[:16]
        return cls(fingerprint, open_pack_store(directory, tag, _CODEC, max_loose=cls.MAX_LOOSE))

    def key(self, data: bytes) -> str:
        return hashlib.sha256(self.fingerprint + data).hexdigest()

    def get(self, key: str) -> CachedDomain | None:
        """The entry for `key`, or None (also for a damaged entry: it is made again)."""
        return self.store.get(key)

    def put(self, key: str, entry: CachedDomain) -> None:
        """Store `entry` (on disk at `save`)."""
        self.store.put(key, entry)

    def save(self) -> None:
        """Write the entries made by this load."""
        self.store.save()


# The setters of the slots every pydantic model has (BaseModel's `__slots__`; a model class
# adds none): called directly, each skips the attribute lookup `object.__setattr__` makes.
_SLOTS = vars(BaseModel)
_set_dict = _SLOTS["__dict__"].__set__
_set_fields_set = _SLOTS["__pydantic_fields_set__"].__set__
_set_extra = _SLOTS["__pydantic_extra__"].__set__
_set_private = _SLOTS["__pydantic_private__"].__set__
# pickle writes a reduce value starting with copyreg.__newobj__ as its NEWOBJ opcode (C).
_NEWOBJ: Any = copyreg.__newobj__  # type: ignore[attr-defined]


def _set_model_state(model: BaseModel, state: tuple[dict[str, object], set[str]]) -> None:
    """Fill a model made by pickle's NEWOBJ without validating again (what `model_construct`
    does, minus defaults): the values were validated when the entry was written. Called once
    per model (~10^5 for a large inventory), so it sets the four slots through their
    descriptors."""
    values, fields_set = state
    _set_dict(model, values)
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, None)


class _ModelPickler(pickle.Pickler):
    """Pickles plain pydantic models as (class, field values, fields set), restored by
    `_set_model_state`: a few attribute sets per model instead of pydantic's generic
    `__setstate__`, several times faster. Frozen models with equal fields sets share one set
    object (pickle stores it once): nothing mutates the fields set of a frozen model
    (`model_copy` copies it first), and 50,000 accounts load a third faster."""

    def __init__(self, file: SupportsWrite[bytes], protocol: int) -> None:
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


def _as_cached_domain(stored: object) -> CachedDomain | None:
    return stored if isinstance(stored, CachedDomain) else None


_CODEC = Codec(decode=_as_cached_domain, pickler=_ModelPickler)
