"""An invalid account or redirect still exists for the redirect targets' check: its own error
is the one message, not also a "will bounce" warning at every redirect to it (issue 11.4)."""

from __future__ import annotations

import pytest

from compiler.load.crosscheck import ANY_ADDRESS, DomainSource, check_domains
from compiler.load.diagnostics import Finding
from schemas.domain import Domain

BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"


def _source(
    redirects: dict[str, list[str]], accounts: list[str], invalid: set[str], domain: str = "x.test"
) -> DomainSource:
    model = Domain.model_validate(
        {
            "domain": domain,
            "accounts": [{"name": a, "password": BLF} for a in accounts],
            "redirects": [{"name": k, "to": v} for k, v in redirects.items()],
        }
    )
    return DomainSource(f"domains/{domain}.yml", domain, model, invalid=frozenset(invalid))


def _bounces(findings: list[Finding]) -> list[str]:
    return [f.message.split(" ")[0] for f in findings if "will bounce" in f.message]


# Without a duplicate the quick whole-inventory check answers; with one, the full check.
@pytest.mark.parametrize("accounts", [["bob"], ["bob", "bob"]], ids=["quick", "full"])
def test_invalid_declarations_are_no_dangling_targets(accounts: list[str]) -> None:
    redirects = {"info": ["alice@x.test"], "sales": ["team@x.test", "nobody@x.test"]}
    src = _source(redirects, accounts, {"alice@x.test", "team@x.test"})
    assert _bounces(check_domains([src])) == ["nobody@x.test"]


def test_without_the_invalid_declarations_every_target_dangles() -> None:
    src = _source({"info": ["alice@x.test"], "sales": ["team@x.test"]}, ["bob"], set())
    assert _bounces(check_domains([src])) == ["alice@x.test", "team@x.test"]


@pytest.mark.parametrize("accounts", [["bob"], ["bob", "bob"]], ids=["quick", "full"])
def test_a_domain_with_unknown_invalid_names_has_no_dangling_targets(accounts: list[str]) -> None:
    """An invalid item without a readable name (or a section that is no list) may be any
    address of its domain; other domains' targets are still checked."""
    broken = _source({"info": ["alice@x.test"]}, accounts, {ANY_ADDRESS + "x.test"})
    fine = _source({"info": ["nobody@x.test", "nobody@y.test"]}, [], set(), domain="y.test")
    assert _bounces(check_domains([broken, fine])) == ["nobody@y.test"]
