"""Validate parsed YAML against a schema model; turn pydantic errors into readable findings.

Each pydantic error becomes a `Finding` at the data path of the offending value, with a message
that says what is wrong and what is allowed: unknown keys list the allowed ones and name the
one they are likely a typo of ("did you mean 'quota'?"), missing keys are named, union
branches ("a list of domains, or 'all'") are merged into one message.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from compiler.load.diagnostics import DataPath, Finding, PathItem, quote_value

M = TypeVar("M", bound=BaseModel)

# Values never echoed back in messages.
_SECRET_FIELDS = frozenset({"password"})
# An unknown key this similar to an allowed one (difflib's ratio) is named as its likely typo:
# `qouta` (0.8) gets "did you mean 'quota'", `ssh_user` (0.55 to `ssh`) does not.
_TYPO_CUTOFF = 0.75
_TYPO_KEY_MAX = 64


def validate_data(
    model: type[M], data: Any, *, file: str, prefix: DataPath = ()
) -> tuple[M | None, list[Finding]]:
    """Validate `data` as `model`; return (instance, []) or (None, findings)."""
    if not isinstance(data, Mapping):
        return None, [Finding(file, prefix, _not_a_mapping(data))]
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, findings_from_error(exc, model, file=file, prefix=prefix)


def _not_a_mapping(data: Any) -> str:
    kind = "a list" if isinstance(data, list) else f"the value {quote_value(data)}"
    if data is None:
        kind = "nothing (empty)"
    return f"expected a mapping of keys to values, found {kind}"


def findings_from_error(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    file: str,
    prefix: DataPath = (),
    prefix_for: Any = None,
) -> list[Finding]:
    """Findings for every error of `exc` (raised validating `model`). `prefix` is prepended to
    each path; `prefix_for(path) -> (file, prefix)` may instead choose them per error."""
    merged: dict[tuple[str, DataPath, bool], list[str]] = {}
    order: list[tuple[str, DataPath, bool]] = []
    for err in exc.errors():
        path, at_key = _clean_path(model, err["loc"])
        at_key = at_key or err["type"] == "extra_forbidden"
        message = _message(model, err, path)
        err_file, err_prefix = prefix_for(path) if prefix_for else (file, prefix)
        key = (err_file, (*err_prefix, *path), at_key)
        if key not in merged:
            merged[key] = []
            order.append(key)
        if message not in merged[key]:
            merged[key].append(message)
    return [Finding(f, p, "; or ".join(merged[(f, p, k)]), at_key=k) for f, p, k in order]


def _clean_path(model: type[BaseModel], loc: Sequence[PathItem]) -> tuple[DataPath, bool]:
    """Drop union-branch tags and `[key]` markers from a pydantic location."""
    path: list[PathItem] = []
    at_key = False
    tp: Any = model
    for item in loc:
        if item == "[key]":
            at_key = True
            continue
        if isinstance(item, str) and (_is_union(tp) or (tp is None and "[" in item)):
            tp = None  # a branch tag, not data
            continue
        path.append(item)
        tp = _step(tp, item)
    return tuple(path), at_key


def _message(model: type[BaseModel], err: ErrorDetails, path: DataPath) -> str:
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        owner = _model_at(model, path[:-1])
        if owner is None:
            return f"unknown key {quote_value(path[-1])}"
        hint = _close_key(str(path[-1]), owner)
        hint = f" (did you mean {quote_value(hint)}?)" if hint else ""
        allowed = ", ".join(owner.model_fields)
        return f"unknown key {quote_value(path[-1])}{hint}; allowed: {allowed}"
    if kind == "missing":
        return (
            f"required key {quote_value(path[-1])} is missing"
            if path
            else "required value is missing"
        )
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = err.get("input")
    secret = any(item in _SECRET_FIELDS for item in path)
    if not secret and isinstance(value, str | int | float | bool):
        return f"{msg} (got {quote_value(value)})"
    return msg


def _close_key(key: str, owner: type[BaseModel]) -> str | None:
    """The key of `owner` (a field name or alias) that `key` is most likely a typo of, if one
    is close (`qouta` → `quota`)."""
    if len(key) > _TYPO_KEY_MAX:
        return None  # no typo; and matching cost grows with the key's length
    keys: list[str] = []
    for name, info in owner.model_fields.items():
        keys += [k for k in (name, info.alias, info.validation_alias) if isinstance(k, str)]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=_TYPO_CUTOFF)
    return close[0] if close else None


def _strip(tp: Any) -> Any:
    """Unwrap Annotated[...] and Optional[...]."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(_strip(tp)) in (typing.Union, types.UnionType)


def _step(tp: Any, item: PathItem) -> Any:
    tp = _strip(tp)
    if tp is None:
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(item))
        return field.annotation if field else None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (list, tuple, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _model_at(model: type[BaseModel], path: DataPath) -> type[BaseModel] | None:
    tp: Any = model
    for item in path:
        tp = _step(tp, item)
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
