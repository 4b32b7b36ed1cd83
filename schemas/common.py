"""Constrained scalar types shared by every model: identifiers, free text, sizes, and their bounds.

Each type rejects what would inject into a Postfix lookup table, main.cf, a Dovecot passwd-file,
CODEOWNERS, a Sieve script or an SMTP reply, so that no renderer has to escape anything but free
text. The rules:

- every check that guards a value is a full match (`Pattern.fullmatch`: `$` would also match
  before a final newline, and `name: "info\\n"` would become a catch-all map line);
- identifiers (names, addresses, domains, tokens, host and group names, admins) are ASCII:
  that shuts out every control and format character (bidi marks, zero-width characters, line
  separators) at once, and the files they land in are ASCII here;
- free text refuses control characters and line separators and has a length bound that fits
  where it lands (the `*_MAX` constants below, one place for every bound).

Host-side values (paths, networks, listener addresses, user names, time values) are in
`schemas.hostvalues`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

SCHEMA_VERSION = 1

# --- bounds: every length limit, named for where the value lands ----------------------------

LOCAL_PART_MAX = 64  # RFC 5321 4.5.3.1.1
DOMAIN_MAX = 253  # RFC 1035, in text form without the final dot
IDENTIFIER_MAX = 63  # host and group names: one DNS label, one path component
ADMIN_MAX = 255  # a CODEOWNERS owner
TOKEN_MAX = 255  # one unquoted word of main.cf, master.cf or dovecot.conf
USER_NAME_MAX = 32  # useradd's limit
PASSWORD_HASH_MAX = 512  # the longest hash format (Argon2id with a long salt) is far shorter
LINE_MAX = 4096  # one line of a config file (main.cf value, agent.json entry)
# An SMTP reply line is at most 512 bytes (RFC 5321 4.5.3.1.5). The agent answers
# `REJECT 5.7.1 <address>: TEXT` and Postfix prefixes its own code and context: 200 leaves room
# for both with addresses of ordinary length (the agent's policy action itself is capped at
# 4 KB; a longer one is answered DUNNO, i.e. the check would fail open).
REPLY_TEXT_MAX = 200
# The autoresponder subject: a Sieve string and then a mail header (RFC 5322 2.1.1: lines
# should stay under 78 characters, must stay under 998; Pigeonhole encodes and folds it).
SUBJECT_MAX = 200
# A multi-line text: the autoresponder body (a Sieve string) and the whitelist notice (a mail
# body). A reply to a stranger, not a newsletter.
TEXT_MAX = 16 * 1024
PATH_MAX = 1024  # an absolute path on a host (well under Linux's PATH_MAX of 4096)
SOCKET_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the final NUL
DSN_MAX = 1024  # the agent's state DSN


class Frozen(BaseModel):
    """Base of every model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- messages -------------------------------------------------------------------------------

_SHOWN_MAX = 60
_CATEGORY_WORDS = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space",
    "Cs": "a lone surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
}


def show_value(value: str) -> str:
    """`value` for a message: its repr (control and format characters escaped), shortened."""
    if len(value) <= _SHOWN_MAX:
        return repr(value)
    return f"{value[:_SHOWN_MAX]!r}... ({len(value)} characters)"


def describe_char(char: str) -> str:
    """`U+202E RIGHT-TO-LEFT OVERRIDE (an invisible format character ...)`."""
    name = unicodedata.name(char, "")
    kind = _CATEGORY_WORDS.get(unicodedata.category(char), "not ASCII")
    return f"U+{ord(char):04X}{' ' + name if name else ''} ({kind})"


def first_non_ascii(value: str) -> str:
    return next(c for c in value if not c.isascii())


def check_length(value: str, limit: int, what: str) -> None:
    if len(value) > limit:
        raise ValueError(
            f"{show_value(value)} is too long: {what} has at most {limit} characters "
            f"(this one has {len(value)})"
        )


def require_ascii(value: str, what: str) -> None:
    """Refuse a non-ASCII identifier, naming the first offending character."""
    if not value.isascii():
        raise ValueError(
            f"{show_value(value)} contains {describe_char(first_non_ascii(value))}: {what}"
        )


# --- identifiers ----------------------------------------------------------------------------

_ADDRESSES_ASCII = (
    "addresses are ASCII here (Postfix maps and the Dovecot passwd-file; internationalised "
    "domains in their xn-- form)"
)
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
# RFC 5321 dot-atom local part, minus characters that are special in Postfix maps,
# Dovecot passwd-files or main.cf (":", ",", whitespace, quotes, backslash, "#") and "/": an
# account's name is a path component on the host (its maildir, its Sieve script), where "/"
# would nest one account inside another.
_LOCAL_RE = re.compile(r"[a-z0-9!$%&*+=?^_`{|}~-]+(?:\.[a-z0-9!$%&*+=?^_`{|}~-]+)*")


# The checks of names and addresses run once per account and redirect (50,000 and more): the
# common path is one isascii() and one compiled full match, without further calls.


def check_domain(value: str) -> str:
    if not value.isascii():
        require_ascii(value, _ADDRESSES_ASCII)
    v = value.lower()
    if len(v) > DOMAIN_MAX or not _DOMAIN_RE.fullmatch(v):
        raise ValueError(
            f"{show_value(value)} is not a domain name (letters, digits, '-' and '.', at least "
            f"two labels, at most {DOMAIN_MAX} characters)"
        )
    return v


def check_local_part(value: str) -> str:
    # ASCII before lower-casing: str.lower maps some non-ASCII letters to ASCII (KELVIN SIGN
    # becomes "k"), which would let a look-alike through.
    if not value.isascii():
        require_ascii(value, _ADDRESSES_ASCII)
    v = value.lower()
    if not _LOCAL_RE.fullmatch(v):
        raise ValueError(
            f"{show_value(value)} is not a valid local part: letters, digits and "
            ".!$%&*+=?^_`{|}~- only; no whitespace, '/', ':', ',', quotes or control characters"
        )
    if len(v) > LOCAL_PART_MAX:
        check_length(v, LOCAL_PART_MAX, "a local part")
    return v


def check_address(value: str) -> str:
    if value.count("@") != 1:
        raise ValueError(f"{show_value(value)} is not an address of the form local@domain")
    local, domain = value.split("@")
    return f"{check_local_part(local)}@{check_domain(domain)}"


def check_sender_pattern(value: str) -> str:
    """A list entry: a full address or '@domain' (case-insensitive)."""
    if value.startswith("@"):
        return "@" + check_domain(value[1:])
    return check_address(value)


# A name that is also a path component (render --out DIR/<host>) and a CODEOWNERS-safe word:
# starts with a letter or digit, so never "." or ".." or an option.
_IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_identifier(value: str) -> str:
    """A host or group name of `mailcfg.yml`."""
    require_ascii(value, "host and group names are ASCII")
    if not _IDENTIFIER_RE.fullmatch(value):
        raise ValueError(
            f"{show_value(value)} is not a name: letters, digits, '_', '.' and '-', starting "
            "with a letter or digit"
        )
    check_length(value, IDENTIFIER_MAX, "a host or group name")
    return value


# CODEOWNERS owners: @user, @org/team (GitLab: @group/subgroup/...), or an e-mail address.
_FORGE_OWNER_RE = re.compile(r"@[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


def check_admin(value: str) -> str:
    """A domain admin as CODEOWNERS names it; kept as written."""
    require_ascii(value, "admins are ASCII (CODEOWNERS user, team or e-mail address)")
    check_length(value, ADMIN_MAX, "an admin")
    if value.startswith("@"):
        if not _FORGE_OWNER_RE.fullmatch(value):
            raise ValueError(
                f"{show_value(value)} is not a CODEOWNERS owner: @user, @org/team or an "
                "e-mail address (letters, digits, '_', '.', '-')"
            )
        return value
    check_address(value)
    return value


# One unquoted word of main.cf / master.cf / dovecot.conf: printable ASCII without
# whitespace, ',', '#', quotes, backslash or braces.
_TOKEN_RE = re.compile(r"[!$-&(-+\--\[\]-z|~]+")


def check_token(value: str) -> str:
    """A value that lands unquoted in main.cf, master.cf or dovecot.conf."""
    require_ascii(value, "a token is ASCII")
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(
            f"{show_value(value)} must be a single token: no whitespace, ',', '#', quotes, "
            "braces or control characters"
        )
    check_length(value, TOKEN_MAX, "a token")
    return value


# --- free text ------------------------------------------------------------------------------

# Every control character (C0, DEL, C1: category Cc), line and paragraph separators (Zl, Zp:
# str.splitlines and some mail clients break lines there) and lone surrogates (not UTF-8).
_LINE_BREAKING_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same, but newline and tab are text.
_TEXT_BREAKING_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _check_line(value: str, limit: int, what: str) -> str:
    bad = _LINE_BREAKING_RE.search(value)
    if bad:
        raise ValueError(
            f"{show_value(value)} contains {describe_char(bad.group())}: {what} is one line "
            "without control characters (newline, tab, NUL...)"
        )
    check_length(value, limit, what)
    return value


def check_safe_line(value: str) -> str:
    """One line of free text: no control characters (newline, CR, NUL, ...)."""
    return _check_line(value, LINE_MAX, "a line")


def check_subject(value: str) -> str:
    """The autoresponder's subject: one line, bounded for a mail header."""
    return _check_line(value, SUBJECT_MAX, "a subject")


def check_safe_text(value: str) -> str:
    """Multi-line free text (autoresponder body, notice mail): no control characters but
    newline and tab, at most TEXT_MAX characters."""
    bad = _TEXT_BREAKING_RE.search(value)
    if bad:
        raise ValueError(
            f"text contains {describe_char(bad.group())}; only newline and tab of the "
            "control characters are allowed"
        )
    check_length(value, TEXT_MAX, "a text")
    return value


_REPLY_TEXT_RE = re.compile(r"[ -~]*[!-~][ -~]*")


def check_reply_text(value: str) -> str:
    """Text of a policy action and then an SMTP reply: one line of printable ASCII, bounded."""
    require_ascii(value, "an SMTP reply text is ASCII")
    _check_line(value, REPLY_TEXT_MAX, "an SMTP reply text")
    if not _REPLY_TEXT_RE.fullmatch(value):
        raise ValueError("an SMTP reply text must not be empty")
    return value


# --- the same shapes for editors -------------------------------------------------------------

# The JSON Schema export (`compiler.tools.schema`) gives editors a pattern and a bound for each
# type. A pattern is anchored by hand (JSON Schema's are not), portable (ECMAScript, which
# editors run, and Python's `re`: no lookbehind) and accepts at least every valid value
# (upper case too: names are lower-cased after the check); the validators stay the authority.
_LABEL_JS = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_JS = rf"{_LABEL_JS}(?:\.{_LABEL_JS})+"
_LOCAL_CHAR_JS = r"[A-Za-z0-9!$%&*+=?^_`{|}~-]"
LOCAL_PART_JS = rf"{_LOCAL_CHAR_JS}+(?:\.{_LOCAL_CHAR_JS}+)*"
_FORGE_OWNER_JS = r"@[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*"
_LINE_JS = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]*"
_TEXT_JS = r"[^\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]*"


def json_string(pattern: str, max_length: int) -> WithJsonSchema:
    """A string type as the JSON Schema export shows it: `pattern` (unanchored) matched in
    full, at most `max_length` characters."""
    anchored = f"^(?:{pattern})$"
    return WithJsonSchema({"type": "string", "pattern": anchored, "maxLength": max_length})


ADDRESS_JSON = json_string(f"{LOCAL_PART_JS}@{DOMAIN_JS}", LOCAL_PART_MAX + 1 + DOMAIN_MAX)

DomainName = Annotated[str, AfterValidator(check_domain), json_string(DOMAIN_JS, DOMAIN_MAX)]
LocalPart = Annotated[
    str, AfterValidator(check_local_part), json_string(LOCAL_PART_JS, LOCAL_PART_MAX)
]
Address = Annotated[str, AfterValidator(check_address), ADDRESS_JSON]
SenderPattern = Annotated[
    str,
    AfterValidator(check_sender_pattern),
    json_string(f"(?:{LOCAL_PART_JS})?@{DOMAIN_JS}", LOCAL_PART_MAX + 1 + DOMAIN_MAX),
]
Identifier = Annotated[
    str, AfterValidator(check_identifier), json_string("[A-Za-z0-9][A-Za-z0-9_.-]*", IDENTIFIER_MAX)
]
Admin = Annotated[
    str,
    AfterValidator(check_admin),
    json_string(f"{_FORGE_OWNER_JS}|{LOCAL_PART_JS}@{DOMAIN_JS}", ADMIN_MAX),
]
SafeLine = Annotated[str, AfterValidator(check_safe_line), json_string(_LINE_JS, LINE_MAX)]
Subject = Annotated[str, AfterValidator(check_subject), json_string(_LINE_JS, SUBJECT_MAX)]
SafeText = Annotated[str, AfterValidator(check_safe_text), json_string(_TEXT_JS, TEXT_MAX)]
# `_REPLY_TEXT_RE` in a form that runs in linear time in every engine.
ReplyText = Annotated[
    str, AfterValidator(check_reply_text), json_string(" *[!-~][ -~]*", REPLY_TEXT_MAX)
]
Token = Annotated[
    str, AfterValidator(check_token), json_string(r"[!$-&(-+\--\[\]-z|~]+", TOKEN_MAX)
]
Port = Annotated[int, Field(ge=1, le=65535)]


# --- sizes ----------------------------------------------------------------------------------

# ASCII digits only (`\d` and int() also take other scripts' digits), at most 20 of them.
_SIZE_RE = re.compile(r"([0-9]{1,20}) *([KMGT]?)B?", re.I)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# The same forms for editors (JSON Schema patterns are not anchored; `\s`: str.strip()).
_SIZE_PATTERN = r"^\s*[0-9]{1,20} *[KMGTkmgt]?[Bb]?\s*$"


def parse_size(value: object) -> object:
    """Accept 1073741824, "1G", "512M", "45 MB", "0": bytes, or a number with K, M, G or T
    (powers of 1024)."""
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip())
        if not m:
            raise ValueError(
                f"{show_value(value)} is not a size (bytes, or a number with K, M, G or T)"
            )
        return int(m.group(1)) * _UNITS[m.group(2).upper()]
    return value


def size_json_schema(minimum: int) -> WithJsonSchema:
    """A size as an editor sees it: a number of bytes (at least `minimum`) or a string with
    a unit."""
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": minimum},
                {"type": "string", "pattern": _SIZE_PATTERN},
            ],
            "description": "bytes, or a number with K, M, G or T (powers of 1024): 45M, 2G",
        }
    )


# Every size of the inventory (a quota, the message size limit) is this type, so each takes
# the same forms; the model holds bytes, which is what Postfix and Dovecot are given.
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0), size_json_schema(0)]
