"""The validator both sides run on a wire document when it arrives (`wire.py` declares the
documents): `check_document(doc, Declared, "observe reply")` raises `WireError` naming the field
(`files["/etc/a"].mode`) and what was expected. The checks are built from the declarations
(`typing.get_type_hints`), so a declaration is all there is to change.

Stdlib-only, run by the host's own `python3` (3.9 or later): see `wire.py` on `Optional`.
"""

import json
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

# --- the validator ------------------------------------------------------------------------------


class WireError(ValueError):
    """`document` does not match its declaration at `field` (a path such as
    `files["/etc/a"].mode`, empty for the document itself)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.document = ""
        self.path: list[str] = []  # filled in innermost first, on the way out

    @property
    def field(self) -> str:
        return "".join(reversed(self.path)).lstrip(".")

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.document, self.field) if part)
        return f"{where}: {self.problem}" if where else self.problem


Check = Callable[[object], None]


def check_document(doc: object, declared: Any, document: str) -> None:
    """Raise `WireError` unless `doc` (decoded JSON) matches `declared`."""
    check = make_check(declared)
    try:
        check(doc)
    except WireError as exc:
        exc.document = document
        raise


def make_check(declared: Any) -> Check:
    """A function that raises `WireError` for a value not matching `declared`."""
    if declared in (str, int, bool) or declared is type(None):
        return _check_exact(declared)
    origin, args = get_origin(declared), get_args(declared)
    if origin is Union:
        return _check_union([make_check(a) for a in args], describe(declared))
    if origin is Literal:
        return _check_literal(args, describe(declared))
    if origin is list:
        return _check_list(make_check(args[0]))
    if origin is tuple:
        return _check_tuple([make_check(a) for a in args])
    if origin is dict:
        return _check_dict(make_check(args[1]))
    if isinstance(declared, type) and hasattr(declared, "__required_keys__"):
        return _check_typeddict(declared)
    raise TypeError(f"the wire validator has no check for {declared!r}")


def describe(declared: Any) -> str:
    """What `declared` expects, in words."""
    names = {str: "a string", int: "an integer", bool: "true or false", type(None): "null"}
    if declared in names:
        return names[declared]
    origin, args = get_origin(declared), get_args(declared)
    if origin is Union:
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin is list:
        return f"a list of {_plural(describe(args[0]))}"
    if origin is tuple:
        return f"a list of {len(args)} items"
    return "an object"


def describe_value(value: object) -> str:
    """A decoded JSON value in a few words: its kind, and a scalar's beginning."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        text = json.dumps(value[:40]) + ("…" if len(value) > 40 else "")
        return f"the string {text}"
    return "a list" if isinstance(value, list) else "an object"


def _plural(description: str) -> str:
    for article in ("a ", "an "):
        if description.startswith(article):
            return description[len(article) :] + "s"
    return description


def _check_exact(kind: type) -> Check:
    expected = describe(kind)

    def check(value: object) -> None:
        # `type(...) is`: JSON's true is not an integer here, nor 1 a boolean.
        if type(value) is not kind:
            raise WireError(f"expected {expected}, got {describe_value(value)}")

    return check


def _check_union(options: list[Check], expected: str) -> Check:
    def check(value: object) -> None:
        for option in options:
            try:
                option(value)
            except WireError:
                continue
            return
        raise WireError(f"expected {expected}, got {describe_value(value)}")

    return check


def _check_literal(allowed: tuple[object, ...], expected: str) -> Check:
    def check(value: object) -> None:
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise WireError(f"expected {expected}, got {describe_value(value)}")

    return check


def _check_list(item: Check) -> Check:
    def check(value: object) -> None:
        if not isinstance(value, list):
            raise WireError(f"expected a list, got {describe_value(value)}")
        for index, element in enumerate(value):
            try:
                item(element)
            except WireError as exc:
                exc.path.append(f"[{index}]")
                raise

    return check


def _check_tuple(items: list[Check]) -> Check:
    def check(value: object) -> None:
        if not isinstance(value, list) or len(value) != len(items):
            expected = f"a list of {len(items)} items"
            raise WireError(f"expected {expected}, got {describe_value(value)}")
        for index, item in enumerate(items):
            try:
                item(value[index])
            except WireError as exc:
                exc.path.append(f"[{index}]")
                raise

    return check


def _check_dict(item: Check) -> Check:
    def check(value: object) -> None:
        if not isinstance(value, dict):
            raise WireError(f"expected an object, got {describe_value(value)}")
        for key, element in value.items():
            try:
                item(element)
            except WireError as exc:
                exc.path.append(f"[{json.dumps(key)}]")
                raise

    return check


def _check_typeddict(declared: Any) -> Check:
    hints = get_type_hints(declared)
    fields = {name: make_check(hint) for name, hint in hints.items()}
    required = frozenset(declared.__required_keys__)
    names = ", ".join(sorted(hints)) or "none"

    def check(value: object) -> None:
        if not isinstance(value, dict):
            raise WireError(f"expected an object, got {describe_value(value)}")
        for name, field in fields.items():  # in declaration order
            if name not in value:
                if name not in required:
                    continue
                raise _field_error(f".{name}", f"missing (expected {describe(hints[name])})")
            try:
                field(value[name])
            except WireError as exc:
                exc.path.append(f".{name}")
                raise
        for name in value:
            if name not in fields:
                problem = f"not a field of this document (its fields: {names})"
                raise _field_error(f"[{json.dumps(name)}]", problem)

    return check


def _field_error(part: str, problem: str) -> WireError:
    error = WireError(problem)
    error.path.append(part)
    return error
