"""A validated domain file as the cross-file checks see it (`DomainSource`), and the address
sets they derive from all of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.domain import Domain

# In `DomainSource.invalid`, "@" + domain stands for every address of the domain (no address
# starts with "@").
ANY_ADDRESS = "@"


@dataclass(frozen=True, slots=True)
class DomainSource:
    """A validated domain and where it came from. A file with invalid accounts or redirects
    is still cross-checked with the valid ones: `account_index`/`redirect_index` then give
    each kept item's index in the file, and `invalid` holds the addresses the invalid items
    declare (`ANY_ADDRESS` + domain where a name is unknown). Those exist for the redirect
    targets' check: their own error is the one message, not also a "will bounce" warning at
    every redirect to them."""

    file: str
    stem: str  # the file name without extension: must equal the domain
    domain: Domain
    account_index: tuple[int, ...] | None = None
    redirect_index: tuple[int, ...] | None = None
    invalid: frozenset[str] = frozenset()

    def account_at(self, i: int) -> int:
        return self.account_index[i] if self.account_index is not None else i

    def redirect_at(self, i: int) -> int:
        return self.redirect_index[i] if self.redirect_index is not None else i


def enabled_accounts(sources: Sequence[DomainSource]) -> frozenset[str]:
    """The address of every enabled account: those have a mailbox."""
    return frozenset(
        src.domain.address_of(acc.name)
        for src in sources
        for acc in src.domain.accounts
        if acc.enabled
    )


def invalid_addresses(sources: Sequence[DomainSource]) -> frozenset[str]:
    """Every address declared by an invalid account or redirect."""
    return frozenset().union(*(src.invalid for src in sources if src.invalid))
