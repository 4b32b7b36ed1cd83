"""Diagnostics about the inventory: what is wrong, where (file:line:col and field), how bad.

A `Finding` is a problem known by its place in the data (a path of keys and indexes in one
file); `locate` turns it into a `Diagnostic` with a line and column once the file's positions
are read. Positions are only read for files that have findings, so the happy path never pays
for them. `InventoryError` carries every error of a run, not only the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
PathItem = str | int
DataPath = tuple[PathItem, ...]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One located problem. `line` and `col` are 1-based; None when the place is the file."""

    file: str
    line: int | None
    col: int | None
    field: str
    message: str
    severity: Severity = "error"

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
