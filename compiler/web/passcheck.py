"""Check a mail password against its inventory hash, for every scheme the inventory accepts
(`schemas.password`): BLF-CRYPT, SHA512-CRYPT, ARGON2ID, and the legacy MD5-CRYPT, PLAIN-MD5
and NTLM. Comparisons are constant-time; a malformed hash never matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import warnings

import bcrypt

from schemas.password import split_hash

# A real BLF-CRYPT hash of a random password: checked when the address is unknown, so a login
# for a missing account costs the same time as one for an existing account.
DUMMY_HASH = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the `{SCHEME}hash` value `stored`."""
    try:
        scheme, body = split_hash(stored)
    except ValueError:
        return False
    if not password or len(password) > 1024:
        return False
    raw = password.encode()
    if scheme == "BLF-CRYPT":
        # Dovecot writes $2y$; the Python library knows the same algorithm as $2b$.
        fixed = "$2b$" + body[4:] if body.startswith(("$2y$", "$2x$")) else body
        try:
            return bcrypt.checkpw(raw, fixed.encode())
        except ValueError:
            return False
    if scheme in ("SHA512-CRYPT", "MD5-CRYPT"):
        return _crypt_matches(password, body)
    if scheme == "ARGON2ID":
        return _argon2_matches(password, body)
    if scheme == "PLAIN-MD5":
        digest = hashlib.md5(raw, usedforsecurity=False).digest()
        if len(body) == 32:
            return hmac.compare_digest(digest.hex(), body.lower())
        return hmac.compare_digest(base64.b64encode(digest).decode(), body)
    if scheme == "NTLM":
        return hmac.compare_digest(md4(password.encode("utf-16-le")).hex(), body.lower())
    return False


def _crypt_matches(password: str, body: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13
    except ImportError:
        return False
    result = crypt.crypt(password, body)
    return bool(result) and hmac.compare_digest(result, body)


def _argon2_matches(password: str, body: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    try:
        return PasswordHasher().verify(body, password)
    except (Argon2Error, InvalidHashError, ValueError):
        return False


def md4(data: bytes) -> bytes:
    """RFC 1320 MD4 (OpenSSL 3 no longer offers it; NTLM hashes are MD4 of UTF-16LE)."""
    mask = 0xFFFFFFFF
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    message = data + b"\x80" + b"\0" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)

    def rotl(x: int, n: int) -> int:
        return ((x << n) | (x >> (32 - n))) & mask

    for offset in range(0, len(message), 64):
        x = struct.unpack("<16I", message[offset : offset + 64])
        a, b, c, d = state
        for i in range(16):
            k, s = i, (3, 7, 11, 19)[i % 4]
            a, b, c, d = d, rotl((a + ((b & c) | (~b & d)) + x[k]) & mask, s), b, c
        for i in range(16):
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            f = (b & c) | (b & d) | (c & d)
            a, b, c, d = d, rotl((a + f + x[k] + 0x5A827999) & mask, s), b, c
        for i in range(16):
            k = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i]
            s = (3, 9, 11, 15)[i % 4]
            a, b, c, d = d, rotl((a + (b ^ c ^ d) + x[k] + 0x6ED9EBA1) & mask, s), b, c
        state = [(v + w) & mask for v, w in zip(state, (a, b, c, d), strict=True)]
    return struct.pack("<4I", *state)
