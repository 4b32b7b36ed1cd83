"""Make Dovecot password hashes (`mailcfg passwd`) and read a new password safely.

Schemes: BLF-CRYPT (bcrypt, the default), ARGON2ID (argon2-cffi, with the parameters Dovecot's
own `doveadm pw -s ARGON2ID` uses) and SHA512-CRYPT (libc crypt via the stdlib `crypt` module,
present up to Python 3.12).
"""

from __future__ import annotations

import getpass
import secrets
import warnings
from collections.abc import Callable
from typing import TextIO

import bcrypt

from schemas.password import split_hash

MIN_LENGTH = 8  # the seed manual: "at least eight" characters
BCRYPT_COST = 12
SCHEMES = ("BLF-CRYPT", "ARGON2ID", "SHA512-CRYPT")
# As Dovecot's own `doveadm pw -s ARGON2ID` (libsodium) makes them: t=3, 64 MiB, one lane.
# Dovecot verifies in one thread, so more lanes would add nothing but work; 64 MiB stays within
# the auth process's default 256 MiB address-space limit.
ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 65536
ARGON2_LANES = 1
_SHA512_SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class PasswordError(ValueError):
    """The password or scheme is not acceptable; the message says why."""


def check_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the password must have at least {MIN_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise PasswordError("the password must not contain control characters")
    return password


def make_password_hash(password: str, scheme: str = "BLF-CRYPT") -> str:
    """`{SCHEME}hash` of `password`, as Dovecot's passwd-file expects it."""
    check_password(password)
    scheme = scheme.upper()
    if scheme == "BLF-CRYPT":
        raw = password.encode()
        if len(raw) > 72:
            raise PasswordError("BLF-CRYPT uses at most 72 bytes of a password; use SHA512-CRYPT")
        # $2y$ is what Dovecot itself writes; bcrypt's $2b$ is the same algorithm.
        digest = bcrypt.hashpw(raw, bcrypt.gensalt(rounds=BCRYPT_COST, prefix=b"2b")).decode()
        value = "{BLF-CRYPT}" + digest
    elif scheme == "ARGON2ID":
        value = "{ARGON2ID}" + _argon2id(password)
    elif scheme == "SHA512-CRYPT":
        value = "{SHA512-CRYPT}" + _sha512_crypt(password)
    else:
        raise PasswordError(f"cannot make {scheme} hashes; choose one of: {', '.join(SCHEMES)}")
    split_hash(value)  # the inventory must accept what we produce
    return value


def _argon2id(password: str) -> str:
    from argon2 import PasswordHasher, Type

    hasher = PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_LANES,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )
    return hasher.hash(password)


def _sha512_crypt(password: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13
    except ImportError:
        raise PasswordError(
            "SHA512-CRYPT needs the `crypt` module (Python < 3.13); use BLF-CRYPT"
        ) from None
    salt = "".join(secrets.choice(_SHA512_SALT_ALPHABET) for _ in range(16))
    result: str | None = crypt.crypt(password, f"$6${salt}")
    if not result or not result.startswith("$6$"):
        raise PasswordError("this system's crypt() cannot make SHA512-CRYPT hashes")
    return result


def read_password_from(
    stream: TextIO,
    *,
    prompt: Callable[[str], str] = getpass.getpass,
    interactive: bool | None = None,
) -> str:
    """A new password: asked twice with `prompt` when `stream` is a terminal, else the first
    line of `stream` (its line break removed). Raises `PasswordError`."""
    if interactive is None:
        interactive = stream.isatty()
    if interactive:
        first = prompt("New password: ")
        check_password(first)
        if prompt("Repeat password: ") != first:
            raise PasswordError("the two passwords differ")
        return first
    line = stream.readline()
    if not line:
        raise PasswordError("no password on standard input")
    return check_password(line.removesuffix("\n").removesuffix("\r"))
