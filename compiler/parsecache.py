"""Cache of parsed and validated domain files, keyed by content hash.

An entry is the validated `Domain` plus the file's own warnings (already located), pickled under
`<cache_dir>/<key>.pickle`. The key hashes the file's bytes together with a fingerprint of the
code that produced the entry (schema and loader sources, pydantic and Python versions), so
editing a schema invalidates every entry and editing one domain file re-parses only that file.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydantic
from pydantic import BaseModel

import compiler
import schemas
from compiler.diagnostics import Diagnostic
from schemas.common import SCHEMA_VERSION
from schemas.domain import Domain

_FORMAT = b"mailcfg-domain-cache-2"
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


@dataclass(frozen=True, slots=True)
class DomainCache:
    directory: Path
    fingerprint: bytes

    @classmethod
    def open(cls, directory: Path) -> DomainCache:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(directory, code_fingerprint())

    def key(self, data: bytes) -> str:
        return hashlib.sha256(self.fingerprint + data).hexdigest()

    def get(self, key: str) -> CachedDomain | None:
        """The entry for `key`, or None (also for a damaged entry: it is overwritten)."""
        try:
            with open(self.directory / f"{key}.pickle", "rb") as f:
                entry = pickle.load(f)
        except FileNotFoundError:
            return None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            return None
        return entry if isinstance(entry, CachedDomain) else None

    def put(self, key: str, entry: CachedDomain) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                _ModelPickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(entry)
            os.replace(tmp, self.directory / f"{key}.pickle")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def prune(self, used: set[str]) -> int:
        """Remove entries not used by this run once they outnumber the used ones twice over
        (keeps a branch switch cheap, bounds the directory). Returns how many were removed."""
        entries = [p for p in self.directory.glob("*.pickle") if p.stem not in used]
        if len(entries) <= 2 * len(used) + 16:
            return 0
        for p in entries:
            with contextlib.suppress(OSError):
                p.unlink()
        return len(entries)


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
