"""Per-domain render fragments: what a host's account-sized files take from one domain alone.

A fragment lists a domain's enabled accounts in declaration order with their ready-made rows:
the Dovecot passwd line, the agent.json entry without its limits (split around them), the
accounts refused IMAP or POP3, and those with an autoresponder. `compiler.context` assembles
every host's tables from the fragments of the domains it serves, in address order.

`FragmentCache` keeps fragments on disk, keyed by the domain file's content key from the parse
cache (file bytes + schema and loader code) and a fingerprint of the code that makes them, so
after editing one domain file only that domain's rows are made again. The directory must be
private to the user (it holds pickles, which are code when loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import compiler
from compiler.agentconfig import make_account_entries
from compiler.tables import make_passwd_lines
from schemas.domain import Account, Domain

_FORMAT = b"mailcfg-fragment-1"
_CODE = ("fragments.py", "tables.py", "agentconfig.py")
SUBDIRECTORY = "fragments"


@dataclass(frozen=True, slots=True)
class DomainFragment:
    """Rows of one domain's enabled accounts; the tuples run parallel to `addresses`, the
    address lists are subsets of it."""

    addresses: tuple[str, ...]
    passwd: tuple[str, ...]
    agent_before: tuple[str, ...]  # `    "address": {"blacklist": ..., "limits": `
    agent_after: tuple[str, ...]  # `, "whitelist": ...}`
    no_imap: tuple[str, ...]
    no_pop3: tuple[str, ...]
    responders: tuple[str, ...]  # accounts with an enabled autoresponder


def make_fragment(accounts: Iterable[tuple[str, Account]]) -> DomainFragment:
    items = list(accounts)
    before, after = make_account_entries(items)
    return DomainFragment(
        addresses=tuple(a for a, _ in items),
        passwd=tuple(make_passwd_lines(items)),
        agent_before=tuple(before),
        agent_after=tuple(after),
        no_imap=tuple(a for a, acc in items if not acc.imap),
        no_pop3=tuple(a for a, acc in items if not acc.pop3),
        responders=tuple(
            a for a, acc in items if acc.autoresponder is not None and acc.autoresponder.enabled
        ),
    )


def make_domain_fragment(domain: Domain) -> DomainFragment:
    """The fragment of `domain`: its enabled accounts, as `resolve.index_domains` names them."""
    return make_fragment(
        (domain.address_of(acc.name), acc) for acc in domain.accounts if acc.enabled
    )


def code_fingerprint() -> str:
    h = hashlib.sha256(_FORMAT)
    h.update(f"{sys.version_info[:2]}".encode())
    directory = Path(compiler.__file__).parent
    for name in _CODE:
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()[:16]


@dataclass(slots=True)
class FragmentCache:
    """Fragments of the domains of one loaded inventory, from disk when their key is known.
    `keys` maps each `Domain` object of that inventory (by identity; `domains` keeps them
    alive) to its content key; a domain without a key is simply made."""

    directory: Path
    domains: Mapping[str, Domain]
    keys: dict[int, str]
    fingerprint: str
    used: set[str] = field(default_factory=set)

    @classmethod
    def open(
        cls, directory: Path, domains: Mapping[str, Domain], domain_keys: Mapping[str, str]
    ) -> FragmentCache:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = {id(d): domain_keys[name] for name, d in domains.items() if name in domain_keys}
        return cls(directory, domains, keys, code_fingerprint())

    def get(self, domain: Domain) -> DomainFragment:
        key = self.keys.get(id(domain))
        if key is None or self.domains.get(domain.domain) is not domain:
            return make_domain_fragment(domain)
        name = f"{key}-{self.fingerprint}"
        self.used.add(name)
        path = self.directory / f"{name}.pickle"
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f)
            if isinstance(entry, DomainFragment):
                return entry
        except FileNotFoundError:
            pass
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            pass  # damaged: made again and overwritten
        entry = make_domain_fragment(domain)
        self._put(path, entry)
        return entry

    def _put(self, path: Path, entry: DomainFragment) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def prune(self) -> int:
        """Remove fragments not used by this run once they outnumber the used ones twice
        over (as `parsecache.DomainCache.prune`). Returns how many were removed."""
        entries = [p for p in self.directory.glob("*.pickle") if p.stem not in self.used]
        if len(entries) <= 2 * len(self.used) + 16:
            return 0
        for p in entries:
            with contextlib.suppress(OSError):
                p.unlink()
        return len(entries)
