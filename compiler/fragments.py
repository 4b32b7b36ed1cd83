"""Per-domain render fragments: what a host's account-sized files take from one domain alone.

A fragment lists a domain's enabled accounts in declaration order with their ready-made rows:
the Dovecot passwd line, the agent.json entry without its limits (split around them), the
accounts refused IMAP or POP3, and those with an autoresponder. `compiler.context` assembles
every host's tables from the fragments of the domains it serves, in address order.

`FragmentCache` keeps fragments on disk, keyed by the domain file's content key from the parse
cache (file bytes + schema and loader code) under a fingerprint of the code that makes them,
so after editing one domain file only that domain's rows are made again. The directory must
be private to the user (it holds pickles, which are code when loaded).
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


def _read(path: Path) -> dict[str, DomainFragment]:
    """The fragments stored in `path` ({} if missing or damaged: they are made again)."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, DomainFragment)}


def _write(directory: Path, path: Path, data: dict[str, DomainFragment]) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(slots=True)
class FragmentCache:
    """Fragments of the domains of one loaded inventory, from disk when their key is known.
    `keys` maps each `Domain` object of that inventory (by identity; `domains` keeps them
    alive) to its content key; a domain without a key is simply made.

    On disk: one pack file with the fragments of a run, plus one small file per fragment
    made since (creating a file costs about as much as reading a thousand fragments, so a
    cold run writes one file and a run after an edit writes one small file). `save` packs
    again once there are `MAX_LOOSE` loose files, keeping only the fragments in use."""

    directory: Path
    domains: Mapping[str, Domain]
    keys: dict[int, str]
    fingerprint: str
    stored: dict[str, DomainFragment]
    loose: int
    used: dict[str, DomainFragment] = field(default_factory=dict)
    made: dict[str, DomainFragment] = field(default_factory=dict)

    MAX_LOOSE = 64

    @classmethod
    def open(
        cls, directory: Path, domains: Mapping[str, Domain], domain_keys: Mapping[str, str]
    ) -> FragmentCache:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fingerprint = code_fingerprint()
        stored = _read(directory / f"pack-{fingerprint}.pickle")
        loose = sorted(directory.glob(f"loose-{fingerprint}-*.pickle"))
        for path in loose:
            stored.update(_read(path))
        keys = {id(d): domain_keys[name] for name, d in domains.items() if name in domain_keys}
        return cls(directory, domains, keys, fingerprint, stored, len(loose))

    def get(self, domain: Domain) -> DomainFragment:
        key = self.keys.get(id(domain))
        if key is None or self.domains.get(domain.domain) is not domain:
            return make_domain_fragment(domain)
        fragment = self.stored.get(key)
        if fragment is None:
            fragment = self.made[key] = make_domain_fragment(domain)
        self.used[key] = fragment
        return fragment

    def save(self) -> None:
        """Store the fragments made by this run (see the class docstring)."""
        if not self.made:
            return
        if self.loose + len(self.made) <= self.MAX_LOOSE and self.stored:
            for key, fragment in self.made.items():
                path = self.directory / f"loose-{self.fingerprint}-{key}.pickle"
                _write(self.directory, path, {key: fragment})
            return
        _write(self.directory, self.directory / f"pack-{self.fingerprint}.pickle", self.used)
        for path in self.directory.glob("*.pickle"):
            if not path.name.startswith(f"pack-{self.fingerprint}"):
                with contextlib.suppress(OSError):
                    path.unlink()
