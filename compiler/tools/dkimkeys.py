"""A host's DKIM public record as its rspamd role wrote it (`<selector>.txt` beside the key):
read back by observe and turned into a `DkimKey` for `mailcfg dns` and `doctor`.

The file is what `rspamadm dkim_keygen` prints (a zone line, the text split into quoted
strings) or, where the role made the key with openssl, the bare text. It comes from the host,
so it is untrusted: only `k=` (rsa or ed25519) and `p=` (base64, bounded) are taken from it,
and anything else makes it unusable rather than part of a record.
"""

from __future__ import annotations

import re

from compiler.tools.dnsrecords import DkimKey

RECORD_MAX = 8192  # far above a 4096-bit RSA key's record
_QUOTED = re.compile(r'"([^"\\]*)"')
_PUBLIC_KEY = re.compile(r"[A-Za-z0-9+/]{40,1400}={0,2}")


def parse_dkim_record(text: str) -> tuple[str, str]:
    """(algorithm, base64 public key) of a DKIM record file; ValueError when it is not one."""
    if len(text) > RECORD_MAX or not text.isascii():
        raise ValueError("not a DKIM record (too long or not ASCII)")
    parts = _QUOTED.findall(text)
    record = "".join(parts) if parts else text.strip()
    tags: dict[str, str] = {}
    for item in record.split(";"):
        name, eq, value = item.strip().partition("=")
        if not item.strip():
            continue
        if not eq or name.strip() in tags:
            raise ValueError(f"not a DKIM record: {item.strip()[:40]!r}")
        tags[name.strip()] = re.sub(r"\s+", "", value)
    if tags.get("v", "DKIM1") != "DKIM1":
        raise ValueError("not a DKIM record (v= is not DKIM1)")
    algorithm = tags.get("k", "rsa")
    if algorithm not in ("rsa", "ed25519"):
        raise ValueError(f"unknown DKIM key type {algorithm[:20]!r}")
    key = tags.get("p", "")
    if not _PUBLIC_KEY.fullmatch(key):
        raise ValueError("the DKIM record has no usable public key (p=)")
    return algorithm, key


def make_dkim_keys(domains: tuple[str, ...], selector: str, text: str) -> list[DkimKey]:
    """The host's key as a `DkimKey` for each domain it signs for."""
    algorithm, key = parse_dkim_record(text)
    if algorithm == "ed25519":
        return [DkimKey(domain, selector, key, "ed25519") for domain in domains]
    return [DkimKey(domain, selector, key, "rsa") for domain in domains]
