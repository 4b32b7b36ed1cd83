"""Password hash values: which Dovecot schemes are accepted, which are legacy.

Only hashes are ever stored in YAML; a value without a known `{SCHEME}` prefix is rejected
as a probable plaintext password. Every pattern is matched in full (a hash followed by a
newline would add a line to the Dovecot passwd-file) and is ASCII by construction.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from schemas.common import PASSWORD_HASH_MAX, json_string

STRONG_SCHEMES = {
    "SHA512-CRYPT": re.compile(r"\$6\$(rounds=[0-9]+\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}"),
    "BLF-CRYPT": re.compile(r"\$2[abxy]?\$[0-9][0-9]\$[./0-9A-Za-z]{53}"),
    "ARGON2ID": re.compile(
        r"\$argon2id\$v=[0-9]+\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
    ),
}
LEGACY_SCHEMES = {
    "MD5-CRYPT": re.compile(r"\$1\$[./0-9A-Za-z]{1,8}\$[./0-9A-Za-z]{22}"),
    "PLAIN-MD5": re.compile(r"[0-9a-fA-F]{32}|[A-Za-z0-9+/]{22}=="),
    "NTLM": re.compile(r"[0-9a-fA-F]{32}"),
}
_PREFIX = re.compile(r"\{([A-Z0-9-]+)\}(.*)", re.S)


def split_hash(value: str) -> tuple[str, str]:
    """Return (scheme, hash body); raise ValueError if `value` is not a recognised hash."""
    if len(value) > PASSWORD_HASH_MAX:
        raise ValueError(f"a password hash has at most {PASSWORD_HASH_MAX} characters")
    m = _PREFIX.fullmatch(value)
    if not m:
        raise ValueError(
            "password must be a hash with a scheme prefix such as {SHA512-CRYPT}$6$..., "
            "{BLF-CRYPT} or {ARGON2ID}; plaintext passwords are not allowed "
            "(make one with `mailcfg passwd`)"
        )
    scheme, body = m.group(1), m.group(2)
    pattern = STRONG_SCHEMES.get(scheme) or LEGACY_SCHEMES.get(scheme)
    if pattern is None:
        allowed = ", ".join(sorted([*STRONG_SCHEMES, *LEGACY_SCHEMES]))
        raise ValueError(f"unknown password scheme {{{scheme}}}; allowed: {allowed}")
    if not pattern.fullmatch(body):
        raise ValueError(f"malformed {{{scheme}}} hash")
    return scheme, body


def is_legacy_hash(value: str) -> bool:
    """True for schemes accepted only with a warning (MD5-CRYPT, PLAIN-MD5, NTLM)."""
    return split_hash(value)[0] in LEGACY_SCHEMES


def _check(value: str) -> str:
    split_hash(value)
    return value


# For editors: `{SCHEME}` and the body's shape (each scheme's pattern is portable).
_HASH_JS = "|".join(
    rf"\{{{name}\}}(?:{pattern.pattern})"
    for name, pattern in {**STRONG_SCHEMES, **LEGACY_SCHEMES}.items()
)

PasswordHash = Annotated[str, AfterValidator(_check), json_string(_HASH_JS, PASSWORD_HASH_MAX)]
