"""Login checks a password against every hash scheme the inventory accepts."""

from __future__ import annotations

import base64
import hashlib
import warnings

import bcrypt
import pytest
from argon2 import PasswordHasher

from compiler.tools.passwd import make_password_hash
from compiler.web.passcheck import DUMMY_HASH, md4, verify_password
from schemas.password import split_hash

PASSWORD = "correct horse 1"


def _crypt(salt: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return str(crypt.crypt(PASSWORD, salt))


def _hashes() -> dict[str, str]:
    md5 = hashlib.md5(PASSWORD.encode()).digest()
    blf = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    return {
        "blf-2b": "{BLF-CRYPT}" + blf,
        "blf-2y (as Dovecot writes)": "{BLF-CRYPT}$2y$" + blf[4:],
        "blf made by mailcfg passwd": make_password_hash(PASSWORD, "BLF-CRYPT"),
        "sha512-crypt": "{SHA512-CRYPT}" + _crypt("$6$abcdefgh12345678"),
        "sha512-crypt rounds": "{SHA512-CRYPT}" + _crypt("$6$rounds=5000$abcdefgh"),
        "md5-crypt": "{MD5-CRYPT}" + _crypt("$1$abcdefgh"),
        "argon2id": "{ARGON2ID}" + PasswordHasher(time_cost=1, memory_cost=1024).hash(PASSWORD),
        "plain-md5 hex": "{PLAIN-MD5}" + md5.hex(),
        "plain-md5 base64": "{PLAIN-MD5}" + base64.b64encode(md5).decode(),
        "ntlm": "{NTLM}" + md4(PASSWORD.encode("utf-16-le")).hex(),
    }


@pytest.mark.parametrize("name", list(_hashes()))
def test_every_scheme_checks_the_password(name: str) -> None:
    stored = _hashes()[name]
    split_hash(stored)  # a value the inventory accepts
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + "x", stored)
    assert not verify_password("", stored)


def test_ntlm_known_value() -> None:
    # The classic NTLM test vector: NT hash of "password".
    assert md4("password".encode("utf-16-le")).hex() == "8846f7eaee8fb117ad06bdd830b7586c"
    assert verify_password("password", "{NTLM}8846F7EAEE8FB117AD06BDD830B7586C")


@pytest.mark.parametrize(
    "stored",
    ["", "plaintext", "{BLF-CRYPT}$2b$04$short", "{SHA512-CRYPT}$6$x$y", "{UNKNOWN}abc"],
)
def test_a_malformed_hash_never_matches(stored: str) -> None:
    assert not verify_password("plaintext", stored)
    assert not verify_password("", stored)


def test_the_dummy_hash_is_a_valid_hash() -> None:
    split_hash(DUMMY_HASH)
    assert not verify_password("", DUMMY_HASH)
