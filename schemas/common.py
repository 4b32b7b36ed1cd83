"""Constrained scalar types shared by every model: names, addresses, hashes, safe text.

Each type rejects what would inject into a Postfix lookup table, main.cf, a Dovecot passwd-file
or a Sieve script, so that no renderer has to escape anything but free text.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Frozen(BaseModel):
    """Base of every model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
# RFC 5321 dot-atom local part, minus characters that are special in Postfix maps,
# Dovecot passwd-files or main.cf (":", ",", whitespace, quotes, backslash, "#").
_LOCAL_RE = re.compile(r"^[a-z0-9!$%&*+/=?^_`{|}~-]+(\.[a-z0-9!$%&*+/=?^_`{|}~-]+)*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_domain(value: str) -> str:
    v = value.strip().lower()
    if v != value.lower() or not _DOMAIN_RE.match(v) or len(v) > 253:
        raise ValueError(
            f"{value!r} is not a domain name (letters, digits, '-' and '.', at least two labels)"
        )
    return v


def check_local_part(value: str) -> str:
    v = value.lower()
    if not _LOCAL_RE.match(v) or len(v) > 64:
        raise ValueError(
            f"{value!r} is not a valid local part: letters, digits and .!$%&*+/=?^_`{{|}}~- only; "
            "no whitespace, ':', ',', quotes or control characters"
        )
    return v


def check_address(value: str) -> str:
    if value.count("@") != 1:
        raise ValueError(f"{value!r} is not an address of the form local@domain")
    local, domain = value.rsplit("@", 1)
    return f"{check_local_part(local)}@{check_domain(domain)}"


def check_sender_pattern(value: str) -> str:
    """A list entry: a full address or '@domain' (case-insensitive)."""
    if value.startswith("@"):
        return "@" + check_domain(value[1:])
    return check_address(value)


def check_safe_line(value: str) -> str:
    """One line of free text: no control characters (newline, CR, NUL, ...)."""
    if _CONTROL_RE.search(value):
        raise ValueError(f"{value!r} contains a control character (newline, tab, NUL...)")
    return value


def check_token(value: str) -> str:
    """A value that lands unquoted in main.cf, master.cf or dovecot.conf: no whitespace, no
    control characters, no ',' or '#' or quotes."""
    if not value or re.search(r"[\s,#\"'\\{}]", value) or _CONTROL_RE.search(value):
        raise ValueError(
            f"{value!r} must be a single token: no whitespace, ',', '#', quotes, braces or "
            "control characters"
        )
    return value


def check_safe_text(value: str) -> str:
    """Multi-line free text (autoresponder body): no control characters but newline and tab."""
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value):
        raise ValueError("text contains a control character other than newline or tab")
    return value


DomainName = Annotated[str, AfterValidator(check_domain)]
LocalPart = Annotated[str, AfterValidator(check_local_part)]
Address = Annotated[str, AfterValidator(check_address)]
SenderPattern = Annotated[str, AfterValidator(check_sender_pattern)]
SafeLine = Annotated[str, AfterValidator(check_safe_line)]
SafeText = Annotated[str, AfterValidator(check_safe_text)]
Token = Annotated[str, AfterValidator(check_token)]
Port = Annotated[int, Field(ge=1, le=65535)]
