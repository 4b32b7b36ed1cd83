"""Diagnostics about the inventory: what is wrong, where (file:line:col and field), how bad.

A `Finding` is a problem known by its place in the data (a path of keys and indexes in one
file); `locate` turns it into a `Diagnostic` with a line and column once the file's positions
are read. Positions are only read for files that have findings, so the happy path never pays
for them. `InventoryError` carries every error of a run, not only the first.

The inventory is untrusted and CI prints these messages, so every `Diagnostic` passes through
`clean_message` when it is made: a quoted value is shortened to its first line and
`QUOTE_MAX` characters, a line break ends the message, other invisible characters are escaped,
and no message is longer than `MESSAGE_MAX`. Code that builds messages never has to remember.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
PathItem = str | int
DataPath = tuple[PathItem, ...]

QUOTE_MAX = 80  # characters of one value a message may quote
WORD_MAX = 120  # longest run without a space kept in a message (an unquoted value)
# Long enough for the longest legitimate message (an unknown key listing ~500 characters of
# allowed keys), short enough that no file can be echoed.
MESSAGE_MAX = 1000
_ELLIPSIS = "…"

# A Python repr of a string, as messages quote values: not glued to a word on its left (so the
# apostrophe of "domain's" opens nothing). The end of the text also closes one: a message cut
# inside a long value still has that value shortened (and every opening quote ends a match, so
# the scan stays linear).
_QUOTED = re.compile(r"""(?<![\w'"])(?:'(?:[^'\\\n]|\\.)*(?:'|$)|"(?:[^"\\\n]|\\.)*(?:"|$))""")
_LINE_BREAK = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
_LONG_WORD = re.compile(rf"\S{{{WORD_MAX + 1},}}")


def shorten(text: str, limit: int = QUOTE_MAX) -> str:
    """`text` up to its first line break and at most `limit` characters, "…" where cut."""
    match = _LINE_BREAK.search(text, 0, limit + 1)
    cut = text[: match.start()] if match else text[:limit]
    return text if cut == text else cut + _ELLIPSIS


def quote_value(value: object) -> str:
    """A scalar as a message quotes it (repr, shortened); containers by their kind only, since
    the repr of an aliased structure can be huge."""
    if isinstance(value, str):
        return repr(shorten(value))
    if value is None or isinstance(value, bool | int | float):
        return shorten(repr(value))
    return f"a {type(value).__name__}"


def _shorten_quoted(match: re.Match[str]) -> str:
    literal = match.group()
    if len(literal) <= QUOTE_MAX + 2:
        return literal
    quote = literal[0]
    body = literal[1:-1] if literal.endswith(quote) and len(literal) > 1 else literal[1:]
    newline = body.find("\\n", 0, QUOTE_MAX)  # the repr's escaped line break ends the value
    body = body[:newline] if newline >= 0 else body[:QUOTE_MAX]
    # Never leave half an escape sequence (a lone backslash would escape the closing quote).
    body = body[: len(body) - (len(body) - len(body.rstrip("\\"))) % 2]
    return f"{quote}{body}{_ELLIPSIS}{quote}"


def _escape_invisible(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clean_name(text: str) -> str:
    """A file name or key for a message: invisible characters escaped (a line break in a file
    name must not start a line of its own), bounded."""
    text = _escape_invisible(text[: MESSAGE_MAX + 1])
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX] + _ELLIPSIS


def clean_message(text: str) -> str:
    """`text` safe to print: quoted values shortened, one line, visible, bounded."""
    if len(text) > 2 * MESSAGE_MAX:
        text = text[: 2 * MESSAGE_MAX]  # bound the work below; a cut value is shortened next
    if len(text) > QUOTE_MAX:
        text = _QUOTED.sub(_shorten_quoted, text)
    match = _LINE_BREAK.search(text)
    if match:  # a value that reached the message unquoted: keep its first line only
        text = text[: match.start()] + _ELLIPSIS
    text = _escape_invisible(text)
    if len(text) > WORD_MAX:
        text = _LONG_WORD.sub(lambda m: m.group()[:QUOTE_MAX] + _ELLIPSIS, text)
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX] + _ELLIPSIS


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One located problem. `line` and `col` are 1-based; None when the place is the file."""

    file: str
    line: int | None
    col: int | None
    field: str
    message: str
    severity: Severity = "error"

    def __post_init__(self) -> None:
        # Frozen: the cleaned values replace the given ones once, here.
        object.__setattr__(self, "file", clean_name(self.file))
        object.__setattr__(self, "field", clean_message(self.field))
        object.__setattr__(self, "message", clean_message(self.message))

    def format(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        field = f"{self.field}: " if self.field else ""
        return f"{where}: {self.severity}: {field}{self.message}"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line or 0, self.col or 0, self.field, self.message)


class InventoryError(Exception):
    """The inventory is invalid; `diagnostics` holds every error (and warning) of the run."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(sorted(diagnostics, key=_key))
        errors = sum(1 for d in self.diagnostics if d.severity == "error")
        super().__init__(f"{errors} error(s) in the inventory")

    def __str__(self) -> str:
        lines = [d.format() for d in self.diagnostics]
        errors = sum(1 for d in self.diagnostics if d.severity == "error")
        lines.append(f"{errors} error(s) in the inventory")
        return "\n".join(lines)


def _key(d: Diagnostic) -> tuple[str, int, int, str, str]:
    return d.sort_key()


@dataclass(frozen=True, slots=True)
class Ref:
    """A place another finding points to (the first declaration of a duplicate, a loop hop)."""

    file: str
    path: DataPath


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem at `path` inside `file`'s data, not yet located.

    `at_key` points at the key instead of its value (unknown keys). `refs` are other places
    the message mentions as `{0}`, `{1}`...: each is replaced by `file:line:col`.
    """

    file: str
    path: DataPath
    message: str
    severity: Severity = "error"
    at_key: bool = False
    refs: tuple[Ref, ...] = ()


def format_path(path: Sequence[PathItem]) -> str:
    """`("accounts", 3, "password")` → `accounts[3].password`."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            item = shorten(clean_name(item))  # a key is inventory data too
            out += f".{item}" if out else item
    return out


# (file, path, at_key) -> (1-based line, 1-based col) or None when unknown
Locator = Callable[[str, DataPath, bool], tuple[int, int] | None]


def locate_findings(findings: Iterable[Finding], locator: Locator) -> list[Diagnostic]:
    """Turn findings into diagnostics, deduplicated (a policy error shared by several hosts
    is reported once)."""
    seen: set[Diagnostic] = set()
    out: list[Diagnostic] = []
    for f in findings:
        pos = locator(f.file, f.path, f.at_key)
        message = f.message
        if f.refs:
            # str.replace, not str.format: messages quote user values that may hold braces.
            for i, ref in enumerate(f.refs):
                ref_pos = locator(ref.file, ref.path, False)
                place = f"{ref.file}:{ref_pos[0]}:{ref_pos[1]}" if ref_pos else ref.file
                message = message.replace(f"{{{i}}}", place)
        d = Diagnostic(
            file=f.file,
            line=pos[0] if pos else None,
            col=pos[1] if pos else None,
            field=format_path(f.path),
            message=message,
            severity=f.severity,
        )
        if d not in seen:
            seen.add(d)
            out.append(d)
    return sorted(out, key=_key)
