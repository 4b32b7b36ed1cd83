"""Every change the web app can make, and the access rule, enforced here where the change is
made (pages only decide what to show): a person changes their own account; the admins of a
domain (addresses in its file's `admins`) change any account of that domain and add or delete
accounts; server admins (named when the app starts) do both for every domain. The rule is
checked against the domain file as of the commit the change is made on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ruamel.yaml.comments import CommentedMap

from compiler.tools.passwd import make_password_hash
from compiler.web.gitstore import Committed, Edited, GitInventory, Person
from compiler.web.yamledit import (
    EditError,
    add_account,
    admins_of,
    delete_account,
    dump_document,
    find_account,
    load_document,
    remove_autoresponder,
    rename_account,
    set_autoresponder,
    set_fields,
    set_password,
    set_redirect,
    set_sender_list,
)
from schemas.common import check_address

MODERN_SCHEME = "BLF-CRYPT"


class AccessDenied(Exception):
    """The person may not make this change."""


class Level(Enum):
    ACCOUNT = "account"  # the account's holder, or an admin of its domain
    DOMAIN = "domain"  # an admin of the domain only


@dataclass(frozen=True, slots=True)
class Actor:
    address: str  # lower case
    server_admin: bool = False


def is_domain_admin(actor: Actor, doc: CommentedMap) -> bool:
    return actor.server_admin or actor.address in admins_of(doc)


def authorize(actor: Actor, doc: CommentedMap, target: str, level: Level) -> None:
    """Raise `AccessDenied` unless `actor` may change `target` at `level` in `doc`."""
    domain = str(doc.get("domain", "")).lower()
    if target.rpartition("@")[2] != domain:
        raise AccessDenied(f"{target} is not in {domain}")
    if is_domain_admin(actor, doc):
        return
    if level is Level.ACCOUNT and actor.address == target:
        return
    raise AccessDenied(f"{actor.address} may not change {target}")


def normal_address(text: str) -> str:
    """A full address, lower case; raise `EditError` for anything else."""
    try:
        return check_address(text.strip()).lower()
    except ValueError as exc:
        raise EditError(str(exc)) from None


class Changes:
    """The changes, each one commit of one domain file by `actor`."""

    def __init__(
        self, store: GitInventory, after_commit: Callable[[str], str] | None = None
    ) -> None:
        """`after_commit(domain)` runs after each commit, under the commit lock (`--apply`)."""
        self.store = store
        self.after_commit = after_commit

    def change(
        self, actor: Actor, target: str, level: Level, what: Callable[[CommentedMap], str]
    ) -> Committed:
        """Run `what` on the target's domain file (it returns the message's description)."""
        target = normal_address(target)
        relative = self.store.domain_file(target.rpartition("@")[2])

        def edit(text: str) -> Edited:
            doc = load_document(text)
            authorize(actor, doc, target, level)
            description = what(doc)
            return Edited(dump_document(doc), f"web: {target}: {description}")

        domain = target.rpartition("@")[2]
        after = self.after_commit
        return self.store.commit_edit(
            relative,
            edit,
            Person(actor.address, actor.address),
            (lambda: after(domain)) if after is not None else None,
        )

    # --- account level --------------------------------------------------------------------------

    def change_password(self, actor: Actor, target: str, password: str, repeat: str) -> Committed:
        if password != repeat:
            raise EditError("the two passwords differ")
        value = make_password_hash(password, MODERN_SCHEME)

        def what(doc: CommentedMap) -> str:
            set_password(doc, target, value)
            return "password changed"

        return self.change(actor, target, Level.ACCOUNT, what)

    def change_redirect(
        self, actor: Actor, target: str, mode: str, destinations: Sequence[str]
    ) -> Committed:
        """`mode`: none, forward, or copy (forward and keep a copy in the mailbox)."""
        if mode not in ("none", "forward", "copy"):
            raise EditError(f"unknown redirect mode {mode}")
        to = [normal_address(d) for d in destinations if d.strip()] if mode != "none" else []
        if mode != "none" and not to:
            raise EditError("give the address to redirect to")
        self_address = normal_address(target)
        to = [d for d in to if d != self_address]
        if mode == "copy":
            to.append(self_address)

        def what(doc: CommentedMap) -> str:
            find_account(doc, self_address)
            set_redirect(doc, self_address, to)
            return {"none": "redirect removed", "forward": "redirect set"}.get(
                mode, "redirect set (keeping a copy)"
            )

        return self.change(actor, target, Level.ACCOUNT, what)

    def change_autoresponder(
        self,
        actor: Actor,
        target: str,
        *,
        enabled: bool,
        subject: str,
        body: str,
        only_whitelisted: bool,
        start: dt.date | None,
        end: dt.date | None,
        remove: bool = False,
    ) -> Committed:
        def what(doc: CommentedMap) -> str:
            if remove:
                remove_autoresponder(doc, target)
                return "autoresponder removed"
            set_autoresponder(
                doc,
                target,
                enabled=enabled,
                subject=subject,
                body=body,
                only_whitelisted=only_whitelisted,
                start=start,
                end=end,
            )
            return f"autoresponder {'on' if enabled else 'off'}"

        return self.change(actor, target, Level.ACCOUNT, what)

    def change_sender_list(
        self, actor: Actor, target: str, which: str, enabled: bool, entries: Sequence[str]
    ) -> Committed:
        def what(doc: CommentedMap) -> str:
            set_sender_list(doc, target, which, enabled=enabled, entries=entries)
            return f"{which} {'on' if enabled else 'off'}, {len(entries)} entries"

        return self.change(actor, target, Level.ACCOUNT, what)

    # --- domain level ---------------------------------------------------------------------------

    def add_account(
        self, actor: Actor, target: str, password: str, fields: dict[str, Any]
    ) -> Committed:
        value = make_password_hash(password, MODERN_SCHEME)

        def what(doc: CommentedMap) -> str:
            add_account(doc, normal_address(target), value, fields)
            return "account added"

        return self.change(actor, target, Level.DOMAIN, what)

    def rename_account(self, actor: Actor, target: str, new_address: str) -> Committed:
        """Both names must be of the domain the admin administers (checked on the file)."""
        new = normal_address(new_address)
        if new.rpartition("@")[2] != normal_address(target).rpartition("@")[2]:
            raise AccessDenied(f"{new} is not in the domain of {target}")

        def what(doc: CommentedMap) -> str:
            rename_account(doc, normal_address(target), new)
            return f"account renamed to {new}"

        return self.change(actor, target, Level.DOMAIN, what)

    def delete_account(self, actor: Actor, target: str) -> Committed:
        def what(doc: CommentedMap) -> str:
            delete_account(doc, normal_address(target))
            return "account deleted"

        return self.change(actor, target, Level.DOMAIN, what)

    def change_account(self, actor: Actor, target: str, fields: dict[str, Any]) -> Committed:
        """Quota, protocols, enabled: the domain admin's settings of an account."""

        def what(doc: CommentedMap) -> str:
            set_fields(doc, normal_address(target), fields)
            return "settings: " + ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))

        return self.change(actor, target, Level.DOMAIN, what)

    def set_domain_redirect(
        self, actor: Actor, target: str, destinations: Sequence[str]
    ) -> Committed:
        """Any name of the domain (with or without a mailbox) redirected; none: removed."""
        to = [normal_address(d) for d in destinations if d.strip()]

        def what(doc: CommentedMap) -> str:
            set_redirect(doc, normal_address(target), to)
            return "redirect set" if to else "redirect removed"

        return self.change(actor, target, Level.DOMAIN, what)
