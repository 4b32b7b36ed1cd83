"""Form fields as values: checkboxes, dates, list lines, quotas, protocols. Pure; a bad field
raises `EditError` with a message for the person (the loader checks the rest on commit)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from compiler.web.yamledit import EditError

MAX_LINES = 1000
MAX_FIELD = 10_000
_QUOTA = re.compile(r"[0-9]{1,15}\s?[KMGT]?B?", re.IGNORECASE)
_UNITS = (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024))


def text_field(form: Mapping[str, str], name: str, *, limit: int = MAX_FIELD) -> str:
    value = form.get(name, "")
    if len(value) > limit:
        raise EditError(f"{name}: at most {limit} characters")
    return value


def checkbox(form: Mapping[str, str], name: str) -> bool:
    return form.get(name) in ("on", "yes", "true", "1")


def date_field(form: Mapping[str, str], name: str) -> dt.date | None:
    value = form.get(name, "").strip()
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise EditError(f"{name}: a date as YYYY-MM-DD") from None


def lines_field(form: Mapping[str, str], name: str) -> list[str]:
    lines = [line.strip() for line in text_field(form, name, limit=100_000).splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > MAX_LINES:
        raise EditError(f"{name}: at most {MAX_LINES} lines")
    return lines


def quota_field(form: Mapping[str, str], name: str = "quota") -> int | str:
    """Bytes as a number, or a size such as `2G` (0 or empty: unlimited)."""
    value = form.get(name, "").strip() or "0"
    if not _QUOTA.fullmatch(value):
        raise EditError(f"{name}: bytes, or a number with K, M, G or T (0: unlimited)")
    return int(value) if value.isdigit() else value.upper().replace(" ", "")


def format_size(value: int) -> str:
    """Bytes as the inventory writes them: `2G`, `512M`, or the number (0: unlimited)."""
    for unit, factor in _UNITS:
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def account_fields(form: Mapping[str, str]) -> dict[str, Any]:
    """What a domain admin sets of an account: quota, protocols, enabled."""
    return {
        "quota": quota_field(form),
        "imap": checkbox(form, "imap"),
        "pop3": checkbox(form, "pop3"),
        "enabled": checkbox(form, "enabled"),
    }
