"""The masked view of a sensitive file: the part of it a plan may show.

A role marks a file `sensitive` and may name how to mask it (`mask: passwd-file` in role.yml).
The rendered file carries its mask kind; `masked_view` makes the view when a plan shows a
change of the file or an apply records it with the release (beside the file, so a later plan
has the view of what the host holds too). Plan output reads views only: it never parses a
secret. A sensitive
file without a mask kind (a TLS key) has no view: a plan says only that it changed.

A view is JSON text: the noun of what was hidden ("password") and one entry per line of the
file, `[key, fingerprint, masked line]`. The key names the line's record (a passwd-file's
user), the masked line is the line with its secret replaced by `********` (the scheme prefix
`{BLF-CRYPT}` kept), and the fingerprint, a short digest of the secret alone, lets a plan tell
"password changed" without either value. A fingerprint is never printed: of a hash without a
salt (`{PLAIN-MD5}`) it would let a reader test guesses offline.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from compiler.types import RenderedFile

MASK = "********"
_SCHEME = re.compile(r"\{[A-Za-z0-9._-]{1,32}\}")


@dataclass(frozen=True, slots=True)
class MaskedLine:
    key: str  # the record the line belongs to ("" for a line that is none)
    fingerprint: str  # of the line's secret ("" when it has none); never printed
    text: str  # the line with its secret masked


@dataclass(frozen=True, slots=True)
class MaskedView:
    secret: str  # what was masked, in words ("password")
    lines: tuple[MaskedLine, ...]

    def to_text(self) -> str:
        lines = [[line.key, line.fingerprint, line.text] for line in self.lines]
        return json.dumps({"secret": self.secret, "lines": lines}, separators=(",", ":"))


def parse_view(text: str | None) -> MaskedView | None:
    """The view `to_text` wrote, or None for none or for text that is not one (a view comes
    back from the host's release record)."""
    if not text:
        return None
    try:
        doc = json.loads(text)
        secret, raw = doc["secret"], doc["lines"]
        lines = tuple(MaskedLine(*_strings(entry)) for entry in raw)
    except (ValueError, KeyError, TypeError):
        return None
    return MaskedView(secret, lines) if isinstance(secret, str) else None


def _strings(entry: object) -> tuple[str, str, str]:
    if not isinstance(entry, list) or len(entry) != 3 or not all(isinstance(e, str) for e in entry):
        raise TypeError("a view line is three strings")
    return entry[0], entry[1], entry[2]


def fingerprint(secret: str) -> str:
    """A short digest of `secret` that tells two values apart (see the docstring)."""
    return hashlib.sha256(b"mailcfg masked secret\0" + secret.encode("utf-8")).hexdigest()[:16]


def mask_hash(value: str) -> str:
    """A password hash with everything after its `{SCHEME}` prefix replaced by `********`."""
    scheme = _SCHEME.match(value)
    return (scheme.group(0) if scheme else "") + MASK


def mask_passwd_file(content: str) -> MaskedView:
    """Dovecot's passwd-file (`user:password:uid:gid:gecos:home:shell:extra`): every field
    but the password is kept, so a reviewer sees accounts, quotas and other extra fields."""
    lines = []
    for line in content.splitlines():
        user, sep, rest = line.partition(":")
        if not sep:
            lines.append(MaskedLine("", "", line))
            continue
        password, sep, tail = rest.partition(":")
        masked = mask_hash(password) if password else ""
        text = f"{user}:{masked}{sep}{tail}"
        lines.append(MaskedLine(user, fingerprint(password) if password else "", text))
    return MaskedView("password", tuple(lines))


MASKS: dict[str, Callable[[str], MaskedView]] = {"passwd-file": mask_passwd_file}


def masked_view(file: RenderedFile) -> str | None:
    """The view (as text) of a file: the one it carries, or made by its mask kind; None when
    it has neither. Made when a plan or a release needs it, not at render: a render that is
    only written out (or a plan where the file is unchanged) never masks 50,000 lines."""
    if file.shown is not None:
        return file.shown
    return mask_content(file.mask, file.content) if file.mask else None


def mask_content(kind: str, content: bytes) -> str:
    """The view (as text) of a file of mask kind `kind` (a key of `MASKS`)."""
    return MASKS[kind](content.decode("utf-8", errors="replace")).to_text()
