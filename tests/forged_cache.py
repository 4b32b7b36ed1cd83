"""What a hostile checkout or another user could put where mailcfg's cache stores look: a
pickle that leaves a marker file when loaded, as a plain file (the old format) or in the
store format under a tag made with a key the attacker chose (`compiler.cache.packstore`)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from compiler.cache.packstore import MAGIC

ATTACKER_KEY = b"attacker" * 4


class Payload:
    """Unpickling it creates `marker`: proof that a planted file was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def forged_file(name: str, pickled: bytes, forge: str) -> bytes:
    """The bytes planted as store file `name`: `pickled` as it is ("plain"), or with the
    store's header and a tag under `ATTACKER_KEY` (any other `forge`)."""
    if forge == "plain":
        return pickled
    mac = hmac.new(ATTACKER_KEY, name.encode() + b"\0" + pickled, hashlib.sha256)
    return MAGIC + mac.digest() + pickled
