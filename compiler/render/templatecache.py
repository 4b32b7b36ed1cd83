"""Compiled role templates kept across runs, so a warm render does not compile them again.

Jinja2 turns each template (and each role.yml path or command string) into Python code at
first use: about 40 ms for the built-in roles, every run. `TemplateCodeCache` keeps that code
in a `compiler.cache.packstore` store (`<cache>/templates/`): as Jinja2's bytecode cache for
the templates of the roles' environment (`compiler.render.roles.make_environment`), and through
`compile_string` for role.yml strings, which Jinja2 compiles without one.

An entry is keyed by the template's source (with its name and file for a template file), so an
edited template is compiled again; the store's tag is a digest of what else decides the code:
the Python and Jinja2 versions, the environment's options, filters and tests, and this code.
Entries are `marshal`led code objects, which run when rendered: like every store file they are
loaded only when tagged with the user's key (`compiler.cache.cachedir`), so no code that this
user's mailcfg did not compile from the very source it is keyed by is ever run.

The same store keeps what each role.yml and defaults.yml parsed to (`load_yaml`, keyed by the
file's text and the installed ruamel.yaml): plain data, `marshal`led too, so a warm run neither
parses them nor imports ruamel.yaml (~25 ms).
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import sys
from collections.abc import Callable
from pathlib import Path
from types import CodeType
from typing import Any

import jinja2
from jinja2.bccache import Bucket

import compiler
from compiler.cache.packstore import Codec, PackStore, open_pack_store

_FORMAT = b"mailcfg-template-code-1"
_CODE = ("render/templatecache.py", "render/roles.py", "cache/packstore.py")
# The environment's settings that change the code it generates.
_OPTIONS = (
    "block_start_string",
    "block_end_string",
    "variable_start_string",
    "variable_end_string",
    "comment_start_string",
    "comment_end_string",
    "line_statement_prefix",
    "line_comment_prefix",
    "trim_blocks",
    "lstrip_blocks",
    "newline_sequence",
    "keep_trailing_newline",
    "optimized",
    "autoescape",
    "finalize",
    "is_async",
)


def _unmarshal(stored: object) -> object:
    return marshal.loads(stored) if isinstance(stored, bytes) else None


def _marshal(value: object) -> bytes:
    return marshal.dumps(value)  # type: ignore[arg-type]  # code objects and plain data


# A code object, or a 1-tuple of a YAML file's data (`load_yaml`): each reader checks its kind.
_CODEC: Codec[object] = Codec(decode=_unmarshal, encode=_marshal)


def _yaml_fingerprint() -> bytes:
    """The installed ruamel.yaml's `__init__.py` (which holds its version), found without
    importing it."""
    spec = importlib.util.find_spec("ruamel.yaml")
    origin = spec.origin if spec is not None else None
    return Path(origin).read_bytes() if origin else b""


def environment_fingerprint(env: jinja2.Environment) -> str:
    """A digest of everything but the source that decides `env`'s compiled code."""
    h = hashlib.sha256(_FORMAT)
    h.update(f"{sys.version}|{jinja2.__version__}".encode())
    h.update(repr([(name, getattr(env, name, None)) for name in _OPTIONS]).encode())
    h.update(repr(sorted(env.extensions)).encode())
    h.update(repr((sorted(env.filters), sorted(env.tests))).encode())
    directory = Path(compiler.__file__).parent
    for name in _CODE:
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()[:16]


class TemplateCodeCache(jinja2.BytecodeCache):
    """The compiled code of one environment's templates, for one run: Jinja2 asks it for a
    template's code (`load_bytecode`) and hands it what it compiled (`dump_bytecode`);
    `compile_string` does the same for a template string. `save` writes what was compiled."""

    def __init__(self, env: jinja2.Environment, store: PackStore[object]) -> None:
        self.env = env
        self.store = store
        self._yaml_key: str | None = None

    @classmethod
    def open(cls, directory: Path, env: jinja2.Environment) -> TemplateCodeCache:
        """The cache in `directory` for `env`, made `env`'s bytecode cache."""
        store = open_pack_store(directory, environment_fingerprint(env), _CODEC, max_loose=16)
        cache = cls(env, store)
        env.bytecode_cache = cache
        return cache

    @staticmethod
    def _key(*parts: str) -> str:
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def _code(self, key: str) -> CodeType | None:
        code = self.store.get(key)
        return code if isinstance(code, CodeType) else None

    def load_bytecode(self, bucket: Bucket) -> None:
        bucket.code = self._code(self._key("file", bucket.key, bucket.checksum))

    def dump_bytecode(self, bucket: Bucket) -> None:
        if bucket.code is not None:
            self.store.put(self._key("file", bucket.key, bucket.checksum), bucket.code)

    def compile_string(self, source: str) -> jinja2.Template:
        """`env.from_string(source)`, its code from the cache when it was compiled before."""
        env = self.env
        key = self._key("string", source)
        code = self._code(key)
        if code is None:
            code = env.compile(source)
            self.store.put(key, code)
        return env.template_class.from_code(env, code, env.make_globals(None), None)

    def load_yaml(self, text: str, parse: Callable[[str], Any]) -> Any:
        """`parse(text)`, kept for the next run when it is plain data (`marshal` takes it)."""
        if self._yaml_key is None:
            self._yaml_key = hashlib.sha256(_yaml_fingerprint()).hexdigest()
        key = self._key("yaml", self._yaml_key, text)
        stored = self.store.get(key)
        if isinstance(stored, tuple) and len(stored) == 1:
            return stored[0]
        data = parse(text)
        try:
            marshal.dumps((data,))
        except ValueError:  # not plain data (a timestamp): parsed again next time
            return data
        self.store.put(key, (data,))
        return data

    def save(self) -> None:
        self.store.save()
