"""The page side of the web's access rules: which domain and which account the logged-in
person may see. `changes` checks again where it commits; the two never trust each other.

A person sees their own account; a domain admin (or a server admin) also the domains they
administer and every account in them. Anything else is 403, an unknown account 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flask import abort

from compiler.web.app import actor, web_state
from compiler.web.changes import Actor
from compiler.web.directory import Snapshot
from schemas.domain import Account, Domain


@dataclass(frozen=True, slots=True)
class AdminView:
    """A domain the person administers, as a page shows it."""

    person: Actor
    snapshot: Snapshot
    domain: Domain
    admin_of: Sequence[str]


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account the person may see: their own, or one of a domain they administer."""

    person: Actor
    snapshot: Snapshot
    address: str  # lower-cased
    domain: Domain
    account: Account
    admin_of: Sequence[str]


def administered_domain(domain_name: str) -> AdminView:
    """The domain `domain_name` if the person administers it; 403 otherwise."""
    person = actor()
    snapshot = web_state().directory.snapshot()
    domain_name = domain_name.lower()
    admin_of = snapshot.admin_domains(person.address, person.server_admin)
    if domain_name not in admin_of:
        abort(403)
    return AdminView(person, snapshot, snapshot.inventory.domains[domain_name], admin_of)


def visible_account(address: str) -> AccountView:
    """The account `address` if the person may see it; 403 or 404 otherwise."""
    person = actor()
    snapshot = web_state().directory.snapshot()
    address = address.lower()
    admin_of = snapshot.admin_domains(person.address, person.server_admin)
    if address != person.address and address.rpartition("@")[2] not in admin_of:
        abort(403)
    found = snapshot.account(address)
    if found is None:
        abort(404)
    domain, account = found
    return AccountView(person, snapshot, address, domain, account, admin_of)
