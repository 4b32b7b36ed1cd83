"""Round-trip edits of one domain file's YAML (ruamel): comments, order and layout of
everything not changed stay as written. Each function changes one thing of a parsed document
in place; none checks who asks (that is `changes`) nor validates (that is the loader's job).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString


class EditError(ValueError):
    """The edit cannot be made (unknown account, duplicate name, ...); the message says why."""


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long hash or line
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def load_document(text: str) -> CommentedMap:
    doc = _yaml().load(text)
    if not isinstance(doc, CommentedMap):
        raise EditError("the domain file is not a mapping")
    return doc


def dump_document(doc: CommentedMap) -> str:
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


def full_address(name: object, domain: str) -> str:
    text = str(name)
    return (text if "@" in text else f"{text}@{domain}").lower()


def _items(doc: CommentedMap, key: str) -> CommentedSeq:
    items = doc.get(key)
    if items is None:
        items = CommentedSeq()
        _append(doc, key, items)
    if not isinstance(items, CommentedSeq):
        raise EditError(f"`{key}` is not a list")
    return items


def _index(doc: CommentedMap, key: str, address: str) -> int | None:
    domain = str(doc.get("domain", ""))
    for i, item in enumerate(doc.get(key) or ()):
        if isinstance(item, dict) and full_address(item.get("name", ""), domain) == address:
            return i
    return None


def find_account(doc: CommentedMap, address: str) -> CommentedMap:
    """The account's mapping (raise `EditError` when there is none)."""
    i = _index(doc, "accounts", address.lower())
    if i is None:
        raise EditError(f"no account {address}")
    account: CommentedMap = doc["accounts"][i]
    return account


def admins_of(doc: CommentedMap) -> list[str]:
    return [str(a).lower() for a in doc.get("admins") or () if "@" in str(a)[1:]]


def _last_leaf(node: Any) -> tuple[CommentedMap | CommentedSeq, Any] | None:
    """The container and key (or index) of the last scalar of `node`: where ruamel keeps the
    comment and blank lines that follow the whole node."""
    while True:
        if isinstance(node, CommentedMap) and node:
            key = list(node)[-1]
        elif isinstance(node, CommentedSeq) and node:
            key = len(node) - 1
        else:
            return None
        if isinstance(node[key], (CommentedMap, CommentedSeq)) and node[key]:
            node = node[key]
            continue
        return node, key


def _slot(container: CommentedMap | CommentedSeq) -> int:
    return 2 if isinstance(container, CommentedMap) else 0


def _take_trailing(node: Any) -> Any:
    leaf = _last_leaf(node)
    if leaf is None:
        return None
    items = leaf[0].ca.items.get(leaf[1])
    slot = _slot(leaf[0])
    if not items or len(items) <= slot or items[slot] is None:
        return None
    token, items[slot] = items[slot], None
    if isinstance(leaf[0][leaf[1]], LiteralScalarString) and isinstance(token.value, str):
        token.value = "\n" + token.value  # the block scalar's own line break (see below)
    return token


def _put_trailing(node: Any, token: Any) -> None:
    leaf = _last_leaf(node)
    if token is not None and leaf is not None:
        # After a block scalar the token's first line break is the scalar's own.
        if isinstance(leaf[0][leaf[1]], LiteralScalarString) and token.value.startswith("\n\n"):
            token.value = token.value[1:]
        leaf[0].ca.items.setdefault(leaf[1], [None, None, None, None])[_slot(leaf[0])] = token


@contextmanager
def _trailing_kept(node: Any) -> Iterator[None]:
    """The blank lines and comment after `node` stay after it whatever the edit adds to or
    removes from its end."""
    token = _take_trailing(node)
    yield
    _put_trailing(node, token)


def _append(container: CommentedMap | CommentedSeq, key: Any, value: Any) -> None:
    with _trailing_kept(container):
        if isinstance(container, CommentedMap):
            container[key] = value
        else:
            container.append(value)


def _set(mapping: CommentedMap, key: str, value: Any) -> None:
    if key in mapping:
        mapping[key] = value
    else:
        _append(mapping, key, value)


def set_password(doc: CommentedMap, address: str, password_hash: str) -> None:
    find_account(doc, address)["password"] = DoubleQuotedScalarString(password_hash)


def set_fields(doc: CommentedMap, address: str, fields: dict[str, Any]) -> None:
    """Set plain fields of an account (quota, imap, pop3, enabled)."""
    account = find_account(doc, address)
    with _trailing_kept(account):
        for key, value in fields.items():
            account[key] = value


def set_autoresponder(
    doc: CommentedMap,
    address: str,
    *,
    enabled: bool,
    subject: str,
    body: str,
    only_whitelisted: bool,
    start: dt.date | None,
    end: dt.date | None,
) -> None:
    account = find_account(doc, address)
    text = body.replace("\r\n", "\n").strip("\n") + "\n"
    values: dict[str, Any] = {
        "enabled": enabled,
        "only_whitelisted": only_whitelisted,
        "subject": subject,
        "body": LiteralScalarString(text),
        "start": start,
        "end": end,
    }
    with _trailing_kept(account):
        _put_autoresponder(account, values)


def _put_autoresponder(account: CommentedMap, values: dict[str, Any]) -> None:
    reply = account.get("autoresponder")
    if not isinstance(reply, CommentedMap):
        reply = CommentedMap((k, v) for k, v in values.items() if v is not None)
        _append(account, "autoresponder", reply)
        return
    for key, value in values.items():
        if value is None:
            reply.pop(key, None)
        else:
            _set(reply, key, value)


def remove_autoresponder(doc: CommentedMap, address: str) -> None:
    account = find_account(doc, address)
    with _trailing_kept(account):
        account.pop("autoresponder", None)


def set_sender_list(
    doc: CommentedMap, address: str, which: str, *, enabled: bool, entries: Sequence[str]
) -> None:
    if which not in ("whitelist", "blacklist"):
        raise EditError(f"unknown list {which}")
    account = find_account(doc, address)
    quoted = CommentedSeq(DoubleQuotedScalarString(e) if e.startswith("@") else e for e in entries)
    with _trailing_kept(account):
        current = account.get(which)
        if not isinstance(current, CommentedMap):
            account[which] = CommentedMap(enabled=enabled, entries=quoted)
        else:
            _set(current, "enabled", enabled)
            _set(current, "entries", quoted)


def set_redirect(doc: CommentedMap, address: str, targets: Sequence[str]) -> None:
    """Mail to `address` goes to `targets` (none: the redirect is removed)."""
    redirects = _items(doc, "redirects")
    i = _index(doc, "redirects", address.lower())
    if not targets:
        if i is not None:
            with _trailing_kept(redirects):
                del redirects[i]
        if not redirects:
            del doc["redirects"]
        return
    to: Any = targets[0] if len(targets) == 1 else _flow(targets)
    if i is None:
        entry = CommentedMap()
        entry["name"] = _local_name(doc, address)
        entry["to"] = to
        _append(redirects, None, entry)
    else:
        redirects[i]["to"] = to


def redirect_targets(doc: CommentedMap, address: str) -> list[str]:
    i = _index(doc, "redirects", address.lower())
    if i is None:
        return []
    to = doc["redirects"][i].get("to")
    return [str(t) for t in to] if isinstance(to, list) else [str(to)]


def add_account(
    doc: CommentedMap, address: str, password_hash: str, fields: dict[str, Any]
) -> None:
    if _index(doc, "accounts", address.lower()) is not None:
        raise EditError(f"the account {address} exists already")
    entry = CommentedMap()
    entry["name"] = _local_name(doc, address)
    entry["password"] = DoubleQuotedScalarString(password_hash)
    entry.update(fields)
    _append(_items(doc, "accounts"), None, entry)


def rename_account(doc: CommentedMap, address: str, new_address: str) -> None:
    """The account, and its redirect if it has one, get the new name; other entries that
    name the old address are left for the loader to judge."""
    if _index(doc, "accounts", new_address.lower()) is not None:
        raise EditError(f"the account {new_address} exists already")
    if _index(doc, "redirects", new_address.lower()) is not None:
        raise EditError(f"{new_address} is already a redirect")
    new_name = _local_name(doc, new_address)
    find_account(doc, address)["name"] = new_name
    i = _index(doc, "redirects", address.lower())
    if i is not None:
        doc["redirects"][i]["name"] = new_name


def delete_account(doc: CommentedMap, address: str) -> None:
    i = _index(doc, "accounts", address.lower())
    if i is None:
        raise EditError(f"no account {address}")
    with _trailing_kept(doc["accounts"]):
        del doc["accounts"][i]


def _local_name(doc: CommentedMap, address: str) -> str:
    local, _, domain = address.rpartition("@")
    if domain.lower() != str(doc.get("domain", "")).lower():
        raise EditError(f"{address} is not an address of {doc.get('domain')}")
    return local


def _flow(items: Sequence[str]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq
