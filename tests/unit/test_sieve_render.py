"""Autoresponder Sieve scripts as text: quoting and the alias list, no Pigeonhole binary needed.

Running the scripts through `sievec` and `sieve-test` is in test_sieve_run.py."""

from __future__ import annotations

from compiler.render.sieve import (
    invert_redirects,
    make_vacation_script,
    quote_sieve,
    reaching_addresses,
)
from schemas.domain import Autoresponder

ACCOUNT = "alice@example.com"


def responder(**kw: object) -> Autoresponder:
    base: dict[str, object] = {"subject": "Away", "body": "Back on Monday."}
    return Autoresponder.model_validate(base | kw)


def test_quote_sieve_escapes_backslash_and_quote() -> None:
    assert quote_sieve('a"b\\c') == '"a\\"b\\\\c"'
    assert quote_sieve("x\r\ny\rz") == '"x\ny\nz"'


def test_aliases_are_listed_as_addresses() -> None:
    redirects = {
        "sales@example.com": ("alice@example.com",),
        "info@example.com": ("sales@example.com", "bob@example.org"),
        "x@example.com": ("y@example.org",),
    }
    assert reaching_addresses(ACCOUNT, invert_redirects(redirects)) == [
        "info@example.com",
        "sales@example.com",
    ]
    script = make_vacation_script(
        ACCOUNT, responder(), aliases=reaching_addresses(ACCOUNT, invert_redirects(redirects))
    )
    assert ':addresses ["info@example.com", "sales@example.com"]' in script
