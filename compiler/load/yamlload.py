"""Parse inventory YAML into plain Python data, fast, and find positions when needed.

Semantics are YAML 1.2 (core schema): `true`/`false` are booleans, `yes`/`no`/`on`/`off` are
strings (a boolean *field* still accepts them through pydantic's coercion, so `imap: no` means
false while `name: no` stays the string "no"), plain numbers are numbers, quoted scalars are
strings, dates stay strings until a date field parses them. Duplicate keys are errors; a file
holds exactly one document.

Fast path: rapidyaml parses and emits JSON, `json.loads` builds the objects (rapidyaml has no
direct to-Python path, and walking its tree from Python is slower than the JSON round trip).
rapidyaml's JSON emitter does not apply every YAML 1.2 rule (aliases, tags, `~`, `True`,
`0x10`, `.inf`...), so a cheap byte scan sends any file that may contain such a construct, and
any file rapidyaml rejects or emits invalid JSON for, to ruamel.yaml's pure-Python safe loader,
which also produces the error message and position of syntax errors.

Positions (`load_positions`, `locate`) come from ruamel.yaml's round-trip loader, used only
for files that have a diagnostic.

The input is untrusted, so both paths hold the same limits, checked while the file is read and
before any Python object is built (`_GuardedComposer` on the ruamel paths; on the fast path the
byte scan sends every anchor, alias, tag and merge key to the slow path, rapidyaml's emitter
refuses more than `MAX_DEPTH` nested collections, and the tree's size is checked):
- no anchors or aliases (an inventory needs none; aliases are how a "billion laughs" bomb of a
  few hundred bytes expands to gigabytes in whatever walks the data), no merge keys (`<<`);
- no tags other than YAML 1.2 core ones (`!!str`, `!!int`...): never `!!python/...`,
  `!!binary`, `!!set` or local `!tags`;
- at most `MAX_DEPTH` nested collections and `MAX_NODES` values, so no recursion limit is hit
  and memory stays proportional to a bounded file;
- no integer Python cannot print (more than ~4,300 digits).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ryml

from compiler.load.diagnostics import DataPath

# Constructs the fast path does not handle like YAML 1.2 does, at the start of a value, key or
# sequence entry. A false positive only costs speed (the file takes the slow path).
_RISKY = re.compile(
    rb"(?:^|[:\-\[{,?])[ \t]*(?:"
    rb"[&*!]"  # anchor, alias, tag
    rb"|(?:~|True|TRUE|False|FALSE|Null|NULL)[ \t]*(?:$|[,\]}#])"
    rb"|[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)\b"
    rb"|\+[0-9.]"
    rb"|0[xo]"
    rb"|<<"
    rb")"
    rb"|^(?:---|\.\.\.|%)",
    re.M,
)


# rapidyaml's JSON emitter refuses deeper trees (its own limit, checked in C); the slow path
# counts the same way: collections inside collections, the top-level one is 1, and a 65th one
# passes only when it is empty (rapidyaml sees an empty collection as a leaf).
MAX_DEPTH = 64
# Values in one file (mapping keys not counted, as in rapidyaml's tree): 3.5 times the
# benchmark's single 9.1 MB file of 50,000 accounts (288,000). Bounds the slow path's memory
# (~1 KB a node) and time.
MAX_NODES = 1_000_000


class YamlSyntaxError(Exception):
    """The file is not valid YAML (or not one document); `line`/`col` are 1-based."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


@dataclass(frozen=True, slots=True)
class ParseResult:
    data: Any
    fast: bool  # True when rapidyaml produced it


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey
    return d


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """rapidyaml prints its parse errors on fd 2 before raising; the slow path reports them
    properly, so hide the raw print."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_SLOW = object()


# A cheap pre-check so the regex only runs on the few files that may need it: single bytes
# via one `translate` pass, words via `in` (memchr-fast), case-folded where case does not matter.
_RISKY_BYTES = b"&*!~%<+"
_RISKY_WORDS = tuple(b"True TRUE False FALSE Null NULL --- ...".split())
_RISKY_FOLDED = tuple(b".inf .nan 0x 0o".split())


def _may_be_risky(data: bytes) -> bool:
    hint = (
        len(data.translate(None, _RISKY_BYTES)) != len(data)
        or any(word in data for word in _RISKY_WORDS)
        or any(word in data.lower() for word in _RISKY_FOLDED)
    )
    return hint and _RISKY.search(data) is not None


# Characters YAML does not allow in a file; rapidyaml lets some through, ruamel's reader
# refuses them with their place. C0 controls but tab/LF/CR, and DEL, found by one translate pass;
# C1 controls but NEL, U+FFFE and U+FFFF, by a regex in the files that are not ASCII.
_CONTROL_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_UNPRINTABLE_UTF8 = re.compile(rb"\xc2[\x80-\x84\x86-\x9f]|\xef\xbf[\xbe\xbf]")


def _may_be_unprintable(data: bytes) -> bool:
    if len(data.translate(None, _CONTROL_BYTES)) != len(data):
        return True
    if data.isascii():
        return False
    return (b"\xc2" in data or b"\xef" in data) and _UNPRINTABLE_UTF8.search(data) is not None


def _parse_fast(data: bytes) -> Any:
    if _may_be_risky(data) or _may_be_unprintable(data):
        return _SLOW
    try:
        with _stderr_silenced():
            tree = ryml.parse_in_arena(data)
            if tree.size() > MAX_NODES:
                raise YamlSyntaxError(f"the file holds more than {MAX_NODES:,} values")
            node = tree.root_id()
            if tree.is_stream(node):
                return _SLOW  # explicit documents: let the slow path count and check them
            # Raises past MAX_DEPTH nested collections: the slow path then says where.
            text = ryml.emit_json(tree, node)
    except ryml.ExceptionBasic:
        return _SLOW
    if text is None:
        return None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError, _DuplicateKey):
        return _SLOW


def decode(data: bytes) -> str:
    """`data` as text (a BOM dropped), or a `YamlSyntaxError` at its first invalid byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlSyntaxError("file is not valid UTF-8", line, col) from None


# The ruamel.yaml paths live in `compiler.load.yamlslow`, imported only when a file needs them
# (~15 ms of imports a warm render of fast-path files does without).
def _parse_slow(data: bytes) -> Any:
    from compiler.load.yamlslow import parse_slow

    return parse_slow(data)


def load_positions(data: bytes) -> Any:
    """The round-trip tree of `data` (mappings and sequences carry `.lc` positions), or None
    when the file does not parse (`compiler.load.yamlslow.load_positions`)."""
    from compiler.load.yamlslow import load_positions as load

    return load(data)


def locate(root: Any, path: DataPath, at_key: bool = False) -> tuple[int, int] | None:
    """1-based (line, col) of `path` in a `load_positions` tree
    (`compiler.load.yamlslow.locate`)."""
    from compiler.load.yamlslow import locate as find

    return find(root, path, at_key)


def parse_yaml(data: bytes) -> ParseResult:
    """Parse one YAML document into dicts/lists/scalars; raise `YamlSyntaxError`."""
    decode(data)  # rapidyaml passes invalid UTF-8 through; a few ms for the whole inventory
    value = _parse_fast(data)
    if value is not _SLOW:
        return ParseResult(value, fast=True)
    return ParseResult(_parse_slow(data), fast=False)
