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
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from compiler.diagnostics import DataPath

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


class _Yaml12Constructor(SafeConstructor):
    """Safe constructor that keeps timestamps as strings (YAML 1.2 core has no timestamps), so
    both parse paths give the same data."""


_Yaml12Constructor.add_constructor(
    "tag:yaml.org,2002:timestamp", SafeConstructor.construct_yaml_str
)


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


def _parse_fast(data: bytes) -> Any:
    if _may_be_risky(data):
        return _SLOW
    try:
        with _stderr_silenced():
            tree = ryml.parse_in_arena(data)
    except ryml.ExceptionBasic:
        return _SLOW
    node = tree.root_id()
    if tree.is_stream(node):
        return _SLOW  # explicit documents: let the slow path count and check them
    text = ryml.emit_json(tree, node)
    if text is None:
        return None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, _DuplicateKey):
        return _SLOW


def _new_safe_loader() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _Yaml12Constructor
    yaml.allow_duplicate_keys = False
    return yaml


def _mark_error(exc: MarkedYAMLError) -> YamlSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or ""
    if problem.startswith("found duplicate key"):
        key = problem.removeprefix("found duplicate key ").split(" with value")[0]
        message = f"duplicate key {key}; each key may appear once in a mapping"
    else:
        parts = [p for p in (exc.context, exc.problem) if p]
        message = "invalid YAML: " + ("; ".join(parts) if parts else str(exc).splitlines()[0])
    if mark is None:
        return YamlSyntaxError(message)
    return YamlSyntaxError(message, mark.line + 1, mark.column + 1)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlSyntaxError("file is not valid UTF-8", line, col) from None


def _parse_slow(data: bytes) -> Any:
    text = _decode(data)
    try:
        docs = list(_new_safe_loader().load_all(text))
    except MarkedYAMLError as exc:
        raise _mark_error(exc) from None
    except YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}") from None
    if len(docs) > 1:
        raise YamlSyntaxError(
            f"the file holds {len(docs)} YAML documents; exactly one is allowed", 1, 1
        )
    return docs[0] if docs else None


def parse_yaml(data: bytes) -> ParseResult:
    """Parse one YAML document into dicts/lists/scalars; raise `YamlSyntaxError`."""
    _decode(data)  # rapidyaml passes invalid UTF-8 through; a few ms for the whole inventory
    value = _parse_fast(data)
    if value is not _SLOW:
        return ParseResult(value, fast=True)
    return ParseResult(_parse_slow(data), fast=False)


def load_positions(data: bytes) -> Any:
    """The round-trip tree of `data` (mappings and sequences carry `.lc` positions), or None
    when the file does not parse."""
    try:
        return YAML(typ="rt").load(_decode(data))
    except (YAMLError, YamlSyntaxError):
        return None


def locate(root: Any, path: DataPath, at_key: bool = False) -> tuple[int, int] | None:
    """1-based (line, col) of `path` in a round-trip tree: the value (or key, with `at_key`)
    at the end of the path, or the deepest existing node on the way (a missing key points at
    its mapping)."""
    if not isinstance(root, CommentedMap | CommentedSeq):
        return (1, 1)
    node: Any = root
    pos: tuple[int, int] = (root.lc.line, root.lc.col)
    for i, item in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, CommentedMap):
            key = _find_key(node, item)
            if key is _MISSING:
                break
            pos = node.lc.key(key) if last and at_key else node.lc.value(key)
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(item, int) and 0 <= item < len(node):
            pos = node.lc.item(item)
            node = node[item]
        else:
            break
    return (pos[0] + 1, pos[1] + 1)


_MISSING = object()


def _find_key(node: CommentedMap, item: str | int) -> Any:
    if item in node:
        return item
    # The fast path turns every key into a string; the round-trip tree keeps ints and bools.
    for key in node:
        if str(key) == str(item):
            return key
    return _MISSING
