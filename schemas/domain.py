"""One mail domain: accounts, redirects, per-account lists, autoresponders, domain admins.

Declared in `inventory/domains/<domain>.yml`; a file may only declare objects of its own domain.
Names are local parts ("alice") or full addresses of the file's domain ("alice@example.com").
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from schemas.common import (
    ADDRESS_JSON,
    DOMAIN_JS,
    DOMAIN_MAX,
    LOCAL_PART_JS,
    LOCAL_PART_MAX,
    Address,
    Admin,
    DomainName,
    Frozen,
    SafeText,
    SenderPattern,
    Size,
    Subject,
    check_domain,
    check_local_part,
    json_string,
    parse_size,
)
from schemas.dns import DomainDns
from schemas.password import PasswordHash
from schemas.policy import LimitsOverride


def _name(value: str) -> str:
    """Local part, or the full address (its domain is checked against the file's domain
    later)."""
    if "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{check_local_part(local)}@{check_domain(domain)}"
    return check_local_part(value)


Name = Annotated[
    str,
    BeforeValidator(lambda v: _name(v) if isinstance(v, str) else v),
    json_string(f"{LOCAL_PART_JS}(?:@{DOMAIN_JS})?", LOCAL_PART_MAX + 1 + DOMAIN_MAX),
]
# `to` as written: one address, or a list of them (`_one_or_many`).
_ADDRESSES_JSON = WithJsonSchema(
    {
        "anyOf": [
            ADDRESS_JSON.json_schema,
            {"type": "array", "items": ADDRESS_JSON.json_schema, "minItems": 1},
        ]
    }
)


class SenderList(Frozen):
    """A white or black list: entries are full addresses or '@domain'."""

    enabled: bool = False
    entries: list[SenderPattern] = Field(default_factory=list)


_NO_SENDERS = SenderList()


class Autoresponder(Frozen):
    enabled: bool = True
    subject: Subject  # one line, at most SUBJECT_MAX characters
    body: SafeText  # at most TEXT_MAX characters
    only_whitelisted: bool = False
    start: dt.date | None = None
    end: dt.date | None = None

    @model_validator(mode="after")
    def _dates(self) -> Autoresponder:
        if self.start and self.end and self.end < self.start:
            raise ValueError("autoresponder end date is before its start date")
        return self


class Account(Frozen):
    name: Name
    password: PasswordHash
    quota: Size = 0  # bytes; 0 = unlimited
    imap: bool = True
    pop3: bool = True
    enabled: bool = True
    # A factory returning one shared (frozen) empty list: a plain `= SenderList()` default is
    # deep-copied by pydantic for every account, a large part of validating 50k accounts.
    whitelist: SenderList = Field(default_factory=lambda: _NO_SENDERS)
    blacklist: SenderList = Field(default_factory=lambda: _NO_SENDERS)
    autoresponder: Autoresponder | None = None
    limits: LimitsOverride | None = None


class Redirect(Frozen):
    """Mail to `name` goes to every address in `to` (any domain). On an account that has a
    mailbox, the redirect wins; removing it restores the mailbox. A redirect of an enabled
    account that names the account itself among its targets keeps a copy in the mailbox
    ("forward and keep a copy": Postfix delivers an address that maps to itself)."""

    name: Name
    to: Annotated[list[Address], Field(min_length=1), _ADDRESSES_JSON]

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


CATCH_ALL_DESCRIPTION = (
    "Where mail to every address of this domain that is neither an account nor a redirect "
    "goes (any domain; a local target must be an account or a redirect). Risky: every guessed "
    "address is accepted, so dictionary attacks and spam to made-up names reach the target, "
    "Postfix no longer rejects unknown recipients at RCPT (reject_unlisted_recipient), and a "
    "target in an outside domain makes this host forward that spam, which hurts its "
    "reputation. Prefer a target in the same domain."
)


class Domain(Frozen):
    domain: DomainName
    admins: list[Admin] = Field(default_factory=list)  # CODEOWNERS owners (@user, @org/team, mail)
    accounts: list[Account] = Field(default_factory=list)
    redirects: list[Redirect] = Field(default_factory=list)
    catch_all: Address | None = Field(default=None, description=CATCH_ALL_DESCRIPTION)
    dns: DomainDns | None = Field(
        default=None,
        description="This domain's changes to the server's DMARC and MTA-STS (`mailcfg dns`).",
    )

    def address_of(self, name: str) -> str:
        """Full address for a declared name (local part or full address)."""
        return name if "@" in name else f"{name}@{self.domain}"


__all__ = [
    "Account",
    "Address",
    "Autoresponder",
    "Domain",
    "Redirect",
    "SenderList",
    "Size",
    "parse_size",
]
