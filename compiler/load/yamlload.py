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
from typing import Any, NoReturn

import ryml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, ScalarEvent
from ruamel.yaml.nodes import MappingNode
from ruamel.yaml.reader import ReaderError

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
# Python refuses to read or print a decimal integer of more digits
# (sys.int_info.default_max_str_digits); 0x/0o/0b numbers are held to the same bound.
_INT_DIGITS_MAX = 4300
_INT_LIMIT = 10**_INT_DIGITS_MAX
_YAML_TAG_PREFIX = "tag:yaml.org,2002:"
_CORE_TAGS = frozenset(
    f"{_YAML_TAG_PREFIX}{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
)
_PLAIN_VALUES = "an inventory holds plain values: strings, numbers, booleans, lists and mappings"


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


class _Refused(MarkedYAMLError):
    """A construct the inventory does not allow (not a syntax error: the message says why)."""


def _construct_bounded_int(constructor: SafeConstructor, node: Any) -> int:
    """An int Python can still print and compare cheaply."""
    try:
        value = SafeConstructor.construct_yaml_int(constructor, node)
    except ValueError:  # over Python's digit limit for a decimal string
        value = None
    if value is None or abs(value) >= _INT_LIMIT:
        raise _Refused(
            None,
            None,
            f"this number is too large (at most {_INT_DIGITS_MAX:,} digits)",
            node.start_mark,
        )
    return value


_Yaml12Constructor.add_constructor("tag:yaml.org,2002:int", _construct_bounded_int)


class _GuardedComposer(Composer):
    """ruamel's composer with the inventory's limits, checked on each event before its node
    is built: no anchor, alias, merge key or non-core tag, bounded depth and node count."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.level = 0  # of the node being composed: the top-level node is 1
        self.nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        is_key = index is None and isinstance(parent, MappingNode)
        self._check_event(event, is_key)
        self.level += 1
        if self.level > MAX_DEPTH + 1:  # a value inside the 65th nested collection
            self._refuse(event, f"more than {MAX_DEPTH} nested lists or mappings")
        try:
            return super().compose_node(parent, index)
        finally:
            self.level -= 1

    def _check_event(self, event: Any, is_key: bool) -> None:
        if isinstance(event, AliasEvent) or event.anchor is not None:
            self._refuse(
                event,
                "anchors and aliases (&name, *name) are not allowed in an inventory; "
                "write each value out",
            )
        tag = event.tag
        if tag is not None and tag != "!" and tag not in _CORE_TAGS:
            shown = (
                tag.replace(_YAML_TAG_PREFIX, "!!", 1) if tag.startswith(_YAML_TAG_PREFIX) else tag
            )
            self._refuse(event, f"the tag {shown} is not allowed; {_PLAIN_VALUES}")
        if isinstance(event, ScalarEvent) and event.value == "<<" and event.style is None:
            self._refuse(
                event, "merge keys (<<) are not allowed in an inventory; write each key out"
            )
        if not is_key:
            self.nodes += 1
            if self.nodes > MAX_NODES:
                self._refuse(event, f"the file holds more than {MAX_NODES:,} values")

    @staticmethod
    def _refuse(event: Any, message: str) -> NoReturn:
        raise _Refused(None, None, message, event.start_mark)


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


def _new_safe_loader() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _Yaml12Constructor
    yaml.Composer = _GuardedComposer
    yaml.allow_duplicate_keys = False
    return yaml


def _mark_error(exc: MarkedYAMLError) -> YamlSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or ""
    if isinstance(exc, _Refused):
        message = problem
    elif problem.startswith("found duplicate key"):
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


def _reader_error(exc: ReaderError, text: str) -> YamlSyntaxError:
    """A character YAML does not allow (NUL, most control characters), at its place."""
    pos = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else 0
    return YamlSyntaxError(
        f"invalid YAML: the character U+{char:04X} is not allowed in a YAML file", line, col
    )


def _parse_slow(data: bytes) -> Any:
    text = _decode(data)
    first: Any = None
    count = 0
    try:
        # The composer's node count bounds all documents together; only the first is kept.
        for doc in _new_safe_loader().load_all(text):
            first = doc if count == 0 else first
            count += 1
    except MarkedYAMLError as exc:
        raise _mark_error(exc) from None
    except ReaderError as exc:
        raise _reader_error(exc, text) from None
    except YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}") from None
    if count > 1:
        raise YamlSyntaxError(
            f"the file holds {count} YAML documents; exactly one is allowed", 1, 1
        )
    return first


def parse_yaml(data: bytes) -> ParseResult:
    """Parse one YAML document into dicts/lists/scalars; raise `YamlSyntaxError`."""
    _decode(data)  # rapidyaml passes invalid UTF-8 through; a few ms for the whole inventory
    value = _parse_fast(data)
    if value is not _SLOW:
        return ParseResult(value, fast=True)
    return ParseResult(_parse_slow(data), fast=False)


class _PositionsConstructor(RoundTripConstructor):
    """Round-trip constructor that keeps timestamps as strings, like the parse paths: a
    date-like value that is no real day (`2026-02-30`) must not cost the file its positions
    (the schema's error for it then names no place)."""


_PositionsConstructor.add_constructor(
    "tag:yaml.org,2002:timestamp", RoundTripConstructor.construct_yaml_str
)


def load_positions(data: bytes) -> Any:
    """The round-trip tree of `data` (mappings and sequences carry `.lc` positions), or None
    when the file does not parse."""
    yaml = YAML(typ="rt")
    yaml.Composer = _GuardedComposer  # this file may be a bomb that failed validation
    yaml.Constructor = _PositionsConstructor
    try:
        return yaml.load(_decode(data))
    except (YAMLError, YamlSyntaxError, ValueError, RecursionError):
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
