"""The ruamel.yaml paths of `compiler.load.yamlload`: the safe loader for the files the fast path
sends here (and their syntax errors with positions), and the round-trip loader that finds
positions for diagnostics. Both hold the inventory's limits through `_GuardedComposer` (see
`compiler.load.yamlload`'s docstring). Imported only when a file needs it.
"""

from __future__ import annotations

from typing import Any, NoReturn

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, ScalarEvent
from ruamel.yaml.nodes import MappingNode
from ruamel.yaml.reader import ReaderError

from compiler.load.diagnostics import DataPath
from compiler.load.yamlload import MAX_DEPTH, MAX_NODES, YamlSyntaxError, decode

# Python refuses to read or print a decimal integer of more digits
# (sys.int_info.default_max_str_digits); 0x/0o/0b numbers are held to the same bound.
_INT_DIGITS_MAX = 4300
_INT_LIMIT = 10**_INT_DIGITS_MAX
_YAML_TAG_PREFIX = "tag:yaml.org,2002:"
_CORE_TAGS = frozenset(
    f"{_YAML_TAG_PREFIX}{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
)
_PLAIN_VALUES = "an inventory holds plain values: strings, numbers, booleans, lists and mappings"


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


def _reader_error(exc: ReaderError, text: str) -> YamlSyntaxError:
    """A character YAML does not allow (NUL, most control characters), at its place."""
    pos = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else 0
    return YamlSyntaxError(
        f"invalid YAML: the character U+{char:04X} is not allowed in a YAML file", line, col
    )


def parse_slow(data: bytes) -> Any:
    """ruamel.yaml's pure-Python safe load of one document, with the inventory's limits."""
    text = decode(data)
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
        return yaml.load(decode(data))
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
