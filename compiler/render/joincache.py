"""Joined bases: a host's domain-set data kept whole on disk, and spliced after a domain edit.

The fragment join (`compiler.render.join`) reads every served domain's fragment and lays
50,000 rows out per column; after an edit of one domain file all but that domain's rows are
the same as in the last run. A `JoinedBase` keeps what a full join gave (each table as its
file body, agent.json's account and redirect lines, the autoresponder scripts) with the
content key of each domain it was joined from. A later run for the same served domains and
postmaster takes the base and, for each domain whose key changed (`MAX_CHANGED` at most),
cuts out its rows (every row is keyed by an address of its own domain) and inserts the rows of
its new fragment at their sorted place: no other fragment is read, no other row touched.

A base is only made, and only spliced, where the join is that simple: no alias domains, no
redirect of any served domain leading into another served domain (the join would make those
domains' autoresponder scripts again with the aliases), every row ASCII (a row's key read
from its text sorts as the address does), and each changed domain's new rows keyed in their
domain. Anything else is a full join. A spliced result is checked to hold one row per mailbox
and per redirect in each table, or it is dropped for a full join too.

On disk: one file per served-domain set and postmaster (`<cache>/joined/`), pickled and
tagged with the user's key as the other caches' files (`compiler.cache.packstore.read_tagged`):
a file without a valid tag is never unpickled, and a damaged base is a full join. A base is
written by the full join only; a run that splices writes nothing (its changed domains' new
fragments are the fragment cache's loose files), so the base stays as old as `MAX_CHANGED`
edited domains allow.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from compiler.cache.cachedir import CacheError, prepare_cache_dir
from compiler.cache.packstore import read_tagged, write_tagged
from compiler.render.agentconfig import LIMITS_MARK, SharedAgentText
from compiler.render.fragments import DomainFragment
from compiler.render.resolve import HostConfig
from compiler.render.sieve import SieveScript
from compiler.render.tables import (
    TableTexts,
    alias_row,
    format_lines,
    make_postmaster_aliases,
    make_virtual_mailbox_domains,
)

MAX_CHANGED = 64  # changed domains spliced into one base; more: a full join and a new base
MAX_BASES = 4  # base files kept (one per served-domain set and postmaster)
_FORMAT = "mailcfg-joined-1"


@dataclass(frozen=True, slots=True)
class _Column:
    """One spliced text: its lines' key is the text from `prefix` characters into the line
    up to the first `end`; `rows` gives a fragment's lines, in any order."""

    prefix: str
    end: str
    rows: Callable[[DomainFragment], Iterable[str]]


# agent.json's lines are kept as they are in the file, each ending in "," ("," + "\n"), the
# last one too: so a line is a line wherever it goes, and the file's text is the base's but
# its last two characters.
def _agent_accounts(fragment: DomainFragment) -> Iterable[str]:
    pairs = zip(fragment.agent_before, fragment.agent_after, strict=True)
    return (f"{before}{LIMITS_MARK}{after}," for before, after in pairs)


def _agent_redirects(fragment: DomainFragment) -> Iterable[str]:
    return (f"{line}," for line in fragment.agent_redirects)


# Every text of a base, in the order `JoinedBase.texts` holds them. virtual_alias_maps also
# gets its postmaster rows (`_alias_rows`).
_COLUMNS: dict[str, _Column] = {
    "virtual_mailbox_maps": _Column("", " ", lambda f: f.mailbox_rows),
    "virtual_alias_maps": _Column("", " ", lambda f: (*f.alias_rows, *f.catch_all_rows)),
    "sender_login_maps": _Column("", " ", lambda f: f.sender_rows),
    "passwd": _Column("", ":", lambda f: f.passwd),
    "deny_imap": _Column("", "\n", lambda f: f.no_imap),
    "deny_pop3": _Column("", "\n", lambda f: f.no_pop3),
    "agent_accounts": _Column('    "', '"', _agent_accounts),
    "agent_redirects": _Column('    "', '"', _agent_redirects),
}
# How many lines each text has: one per mailbox or per redirect (None: not fixed).
_PER_MAILBOX = ("virtual_mailbox_maps", "sender_login_maps", "passwd", "agent_accounts")
_ACCOUNTS = list(_COLUMNS).index("agent_accounts")


@dataclass(frozen=True, slots=True)
class JoinedBase:
    """A full join's domain-set data of `domain_names` with `postmaster`: its texts (see
    `_COLUMNS`), autoresponder scripts `(address, script)` by address, the content key each
    domain's fragment had and the domains each domain's redirects lead into."""

    domain_names: tuple[str, ...]
    postmaster: str
    keys: dict[str, str]
    entered: dict[str, tuple[str, ...]]
    texts: tuple[str, ...]
    counts: tuple[int, ...]  # lines of each text
    responders: tuple[tuple[str, str], ...]


def _entered(fragment: DomainFragment) -> tuple[str, ...]:
    return tuple(sorted({t.rpartition("@")[2] for t in fragment.outside_targets}))


def _is_simple(cfg: HostConfig) -> bool:
    return not cfg.alias_domains


@dataclass(frozen=True, slots=True)
class JoinedBases:
    """The base files of one fragment cache directory, read and written with `key`."""

    directory: Path
    key: bytes
    tag: str

    @classmethod
    def open(cls, directory: Path, key: bytes, tag: str) -> JoinedBases | None:
        try:
            prepare_cache_dir(directory, tighten=False)
        except (CacheError, OSError):
            return None
        return cls(directory, key, tag)

    def _path(self, cfg: HostConfig) -> Path:
        h = hashlib.sha256("\0".join((*cfg.domain_names, "", cfg.postmaster)).encode())
        return self.directory / f"base-{self.tag}-{h.hexdigest()[:32]}.pickle"

    def read(self, cfg: HostConfig) -> JoinedBase | None:
        """The base of `cfg`'s served domains and postmaster, if there is a sound one."""
        if not _is_simple(cfg):
            return None
        stored = read_tagged(self._path(cfg), self.key).get(_FORMAT)
        try:
            base = JoinedBase(*stored)  # type: ignore[misc]
        except TypeError:
            return None
        if base.domain_names != cfg.domain_names or base.postmaster != cfg.postmaster:
            return None
        if not len(base.texts) == len(base.counts) == len(_COLUMNS):
            return None
        if not all(isinstance(t, str) for t in base.texts):
            return None
        return base

    def write(
        self,
        cfg: HostConfig,
        keys: Mapping[str, str],
        fragments: Sequence[DomainFragment],
        data: DomainSetDataLike,
    ) -> None:
        """Keep `data` (the full join of `fragments`, the fragments of `cfg.domains` with
        content `keys`) as the base of `cfg`'s domains, if it is one a splice can start from."""
        base = _make_base(cfg, keys, fragments, data)
        path = self._path(cfg)
        if base is None:
            # An old base no splice can start from (the domains now redirect into each
            # other): removed, or every run would read it for nothing.
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        fields = [getattr(base, name) for name in JoinedBase.__slots__]
        write_tagged(path, self.key, {_FORMAT: tuple(fields)})
        self._drop_old(path)

    def _drop_old(self, kept: Path) -> None:
        """Keep the `MAX_BASES` newest base files of this code (`kept` among them)."""
        with contextlib.suppress(OSError):
            found = [(p.stat().st_mtime_ns, p) for p in self.directory.glob("*.pickle")]
            ours = sorted((t, p) for t, p in found if p.name.startswith(f"base-{self.tag}-"))
            stale = [p for t, p in found if not p.name.startswith(f"base-{self.tag}-")]
            stale += [p for _, p in ours[:-MAX_BASES] if p != kept]
            for path in stale:
                with contextlib.suppress(OSError):
                    os.unlink(path)


class DomainSetDataLike(Protocol):
    """What `_make_base` reads of `compiler.render.join.DomainSetData`."""

    @property
    def tables(self) -> TableTexts: ...
    @property
    def autoresponders(self) -> tuple[SieveScript, ...]: ...
    @property
    def agent_text(self) -> SharedAgentText: ...


def _make_base(
    cfg: HostConfig,
    keys: Mapping[str, str],
    fragments: Sequence[DomainFragment],
    data: DomainSetDataLike,
) -> JoinedBase | None:
    names = cfg.domain_names
    if not _is_simple(cfg) or any(name not in keys for name in names):
        return None
    entered = {f.domain: _entered(f) for f in fragments}
    if len(entered) != len(names) or not _enters_none(entered.values(), names):
        return None
    shared = data.agent_text
    # One line per account, its limits' place marked, and one per redirect (none of their
    # entries holds a newline): see `_agent_accounts`.
    accounts = LIMITS_MARK.join(shared.around) + ",\n" if shared.around else ""
    redirects = shared.redirects + ",\n" if shared.redirects else ""
    tables = data.tables
    texts = (
        tables.virtual_mailbox_maps,
        tables.virtual_alias_maps,
        tables.sender_login_maps,
        tables.passwd,
        tables.deny_imap,
        tables.deny_pop3,
        accounts,
        redirects,
    )
    if not all(text.isascii() for text in texts):
        return None
    if texts[_ACCOUNTS].count(LIMITS_MARK) != len(cfg.mailboxes):
        return None  # an account line's parts hold a separator: they could not be split
    counts = tuple(text.count("\n") for text in texts)
    if not _counts_match(counts, cfg):
        return None
    responders = tuple((s.address, s.script) for s in data.autoresponders)
    keys_used = {n: keys[n] for n in names}
    return JoinedBase(names, cfg.postmaster, keys_used, entered, texts, counts, responders)


def _enters_none(entered: Iterable[Sequence[str]], names: Sequence[str]) -> bool:
    served = set(names)
    return not any(served.intersection(domains) for domains in entered)


def _counts_match(counts: Sequence[int], cfg: HostConfig) -> bool:
    """Whether texts of `counts` lines hold one per mailbox (per redirect) where they must."""
    count = dict(zip(_COLUMNS, counts, strict=True))
    mailboxes = len(cfg.mailboxes)
    return all(count[n] == mailboxes for n in _PER_MAILBOX) and count["agent_redirects"] == len(
        cfg.redirects
    )


def changed_domains(base: JoinedBase, keys: Mapping[str, str]) -> list[str] | None:
    """The served domains whose fragment is no longer the one `base` was joined from, or
    None if a domain has no key or too many changed."""
    changed = []
    for name in base.domain_names:
        key = keys.get(name)
        if key is None:
            return None
        if key != base.keys[name]:
            changed.append(name)
    return changed if len(changed) <= MAX_CHANGED else None


@dataclass(frozen=True, slots=True)
class Spliced:
    """A base with the rows of some domains replaced: the parts of a `DomainSetData`."""

    tables: TableTexts
    autoresponders: tuple[SieveScript, ...]
    agent_text: SharedAgentText


def splice_base(
    base: JoinedBase, cfg: HostConfig, fragments: Sequence[DomainFragment]
) -> Spliced | None:
    """`base` with the rows of each domain of `fragments` (its new fragment) in place of its
    old ones, or None where the splice cannot stand for a full join (see the module
    docstring)."""
    new = {f.domain: f for f in fragments}
    entered = dict(base.entered)
    entered.update((name, _entered(f)) for name, f in new.items())
    if not _enters_none(entered.values(), base.domain_names):
        return None
    postmaster_rows = _postmaster_rows(cfg, new)
    texts, counts = [], []
    for text, count, (name, column) in zip(base.texts, base.counts, _COLUMNS.items(), strict=True):
        rows: dict[str, list[str]] = {}
        for domain, fragment in new.items():
            rows[domain] = [*column.rows(fragment)]
            if name == "virtual_alias_maps":
                rows[domain] += postmaster_rows.get(domain, ())
        spliced = _splice_text(text, column, rows)
        if spliced is None:
            return None
        texts.append(spliced[0])
        counts.append(count + spliced[1])
    if not _counts_match(counts, cfg):
        return None
    return _spliced(cfg, texts, _splice_responders(base.responders, new))


def _postmaster_rows(cfg: HostConfig, new: Mapping[str, DomainFragment]) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for source, targets in make_postmaster_aliases(cfg):
        domain = source.rpartition("@")[2]
        if domain in new:
            rows.setdefault(domain, []).append(alias_row(source, targets))
    return rows


def _spliced(cfg: HostConfig, texts: Sequence[str], responders: list[SieveScript]) -> Spliced:
    mailbox, alias, sender, passwd, deny_imap, deny_pop3, accounts, redirects = texts
    tables = TableTexts(
        virtual_mailbox_domains=format_lines(make_virtual_mailbox_domains(cfg)),
        virtual_mailbox_maps=mailbox,
        virtual_alias_maps=alias,
        sender_login_maps=sender,
        passwd=passwd,
        deny_imap=deny_imap,
        deny_pop3=deny_pop3,
    )
    around = accounts.split(LIMITS_MARK) if accounts else []
    if around:
        around[-1] = around[-1][:-2]  # the file's last entry ends without ",\n"
    agent_text = SharedAgentText(
        addresses=tuple(sorted(cfg.mailboxes)),
        around=tuple(around),
        redirects=redirects[:-2],
    )
    return Spliced(tables, tuple(responders), agent_text)


def _splice_responders(
    responders: Sequence[tuple[str, str]], new: Mapping[str, DomainFragment]
) -> list[SieveScript]:
    scripts = [SieveScript(a, s) for a, s in responders if a.rpartition("@")[2] not in new]
    for fragment in new.values():
        scripts += (SieveScript(r.address, r.script) for r in fragment.responders)
    scripts.sort(key=lambda s: s.address)
    return scripts


def _line_key(text: str, start: int, column: _Column) -> str:
    begin = start + len(column.prefix)
    return text[begin : text.index(column.end, begin)]


def _splice_text(
    text: str, column: _Column, rows: Mapping[str, Sequence[str]]
) -> tuple[str, int] | None:
    """`text` (lines sorted by key) without the lines keyed in the domains of `rows`, with
    `rows` (by domain) at their sorted place, and how many lines it gained; None if a new
    row is not keyed in its domain, not one line of ASCII or (an account line) not in two
    parts."""
    cuts: list[tuple[int, int]] = []
    inserts: list[tuple[int, str, str]] = []
    for domain, lines in rows.items():
        cuts += _domain_lines(text, domain, column)
        for line in lines:
            row = line + "\n"
            key = _line_key(row, 0, column)
            if not row.startswith(column.prefix) or not row.isascii() or "\n" in line:
                return None
            if column is _COLUMNS["agent_accounts"] and line.count(LIMITS_MARK) != 1:
                return None
            if key.rpartition("@")[2] != domain or "@" in key.rpartition("@")[0]:
                return None
            inserts.append((_insert_at(text, key, column), key, row))
    # Both are line starts: a cut is one whole line, a row goes in before a line (or at the
    # end), so walking them in offset order copies every kept line once.
    events = [(start, 0, "", stop, "") for start, stop in cuts]
    events += [(at, 1, key, at, row) for at, key, row in inserts]
    events.sort()
    pieces: list[str] = []
    position = 0
    for at, _, _, stop, row in events:
        if at > position:
            pieces.append(text[position:at])
        pieces.append(row)
        position = max(position, stop)
    pieces.append(text[position:])
    return "".join(pieces), len(inserts) - len(cuts)


def _domain_lines(text: str, domain: str, column: _Column) -> list[tuple[int, int]]:
    """(start, stop) of each line of `text` keyed by an address of `domain` (or `@domain`)."""
    needle = f"@{domain}{column.end}"
    found = []
    at = text.find(needle)
    while at >= 0:
        start = text.rfind("\n", 0, at) + 1
        local = text[start + len(column.prefix) : at]
        if text.startswith(column.prefix, start) and not any(c in local for c in '@ :"\n'):
            found.append((start, text.index("\n", at) + 1))
        at = text.find(needle, at + len(needle))
    return found


def _insert_at(text: str, key: str, column: _Column) -> int:
    """The start of the first line of `text` whose key sorts after `key` (or its end)."""
    low, high = 0, len(text)  # both line starts (or the end)
    while low < high:
        middle = (low + high) // 2
        newline = text.rfind("\n", low, middle)
        start = low if newline < 0 else newline + 1
        if _line_key(text, start, column) <= key:
            low = text.index("\n", start) + 1
        else:
            high = start
    return low
