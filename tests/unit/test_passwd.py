"""Password hashes: Dovecot itself (`doveadm pw -t`) must accept each hash we make."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest

from compiler.tools.passwd import PasswordError, make_password_hash, read_password_from
from schemas.password import is_legacy_hash, split_hash

DOVEADM = shutil.which("doveadm")


def doveadm_verifies(hashed: str, password: str) -> bool:
    assert DOVEADM, "doveadm (dovecot-core) is required for this test"
    done = subprocess.run(
        [DOVEADM, "pw", "-t", hashed, "-p", password], capture_output=True, text=True, timeout=60
    )
    return done.returncode == 0 and "(verified)" in done.stdout


@pytest.mark.parametrize("scheme", ["BLF-CRYPT", "ARGON2ID", "SHA512-CRYPT"])
def test_dovecot_accepts_the_hash_and_rejects_a_wrong_password(scheme: str) -> None:
    hashed = make_password_hash("correct horse battery", scheme)
    assert hashed.startswith(f"{{{scheme}}}")
    assert split_hash(hashed)[0] == scheme and not is_legacy_hash(hashed)
    assert doveadm_verifies(hashed, "correct horse battery")
    assert not doveadm_verifies(hashed, "correct horse battery!")


def test_argon2id_has_dovecots_own_parameters_and_the_web_login_accepts_it() -> None:
    from compiler.web.passcheck import verify_password

    hashed = make_password_hash("correct horse battery", "argon2id")
    assert hashed.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert verify_password("correct horse battery", hashed)
    assert not verify_password("correct horse battery!", hashed)


def test_hashes_are_salted() -> None:
    assert make_password_hash("same-password") != make_password_hash("same-password")


def test_non_ascii_password_verifies() -> None:
    hashed = make_password_hash("pässwörd-ñ", "SHA512-CRYPT")
    assert doveadm_verifies(hashed, "pässwörd-ñ")


@pytest.mark.parametrize("password", ["short", "1234567", ""])
def test_minimum_length_is_eight(password: str) -> None:
    with pytest.raises(PasswordError, match="at least 8"):
        make_password_hash(password)


def test_unknown_scheme_names_the_allowed_ones() -> None:
    with pytest.raises(PasswordError, match="BLF-CRYPT, ARGON2ID, SHA512-CRYPT"):
        make_password_hash("long enough", "MD5-CRYPT")


def test_control_characters_are_refused() -> None:
    with pytest.raises(PasswordError, match="control"):
        make_password_hash("long enough\x00x")


def test_read_password_from_a_pipe_takes_the_first_line() -> None:
    assert read_password_from(io.StringIO("s3cret-pass\nignored\n")) == "s3cret-pass"
    assert read_password_from(io.StringIO("s3cret-pass\r\n")) == "s3cret-pass"


def test_read_password_from_empty_stdin_is_an_error() -> None:
    with pytest.raises(PasswordError, match="no password"):
        read_password_from(io.StringIO(""))


def test_read_password_from_pipe_checks_length() -> None:
    with pytest.raises(PasswordError, match="at least 8"):
        read_password_from(io.StringIO("short\n"))


def test_terminal_asks_twice() -> None:
    answers = iter(["s3cret-pass", "s3cret-pass"])
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return next(answers)

    assert read_password_from(io.StringIO(), prompt=prompt, interactive=True) == "s3cret-pass"
    assert prompts == ["New password: ", "Repeat password: "]


def test_terminal_mismatch_is_an_error() -> None:
    answers = iter(["s3cret-pass", "s3cret-pas"])
    with pytest.raises(PasswordError, match="differ"):
        read_password_from(io.StringIO(), prompt=lambda _: next(answers), interactive=True)
