"""What the pages read: the inventory as loaded by `mailcfg validate`'s loader, reloaded when
the working copy changes (its HEAD or a file's size or time), and the lookups made on it:
an account by address, the domains an address administers, a domain's client settings.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from compiler.build import BuildSession
from compiler.load.inventory import DOMAINS_DIR
from compiler.tools.dnsrecords import DnsPlan
from compiler.web.gitstore import GitInventory
from schemas.domain import Account, Domain
from schemas.inventory import Inventory

# SRV label → (protocol, implicit TLS): SSL/TLS from the first byte, else STARTTLS.
SERVICES = {
    "_imaps._tcp": ("imap", True),
    "_imap._tcp": ("imap", False),
    "_pop3s._tcp": ("pop3", True),
    "_pop3._tcp": ("pop3", False),
    "_submissions._tcp": ("smtp", True),
    "_submission._tcp": ("smtp", False),
}
_NAMES = {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP (sending)"}


@dataclass(frozen=True, slots=True)
class ClientSetting:
    kind: str  # imap, pop3 or smtp
    server: str
    port: int
    implicit_tls: bool

    @property
    def protocol(self) -> str:
        return _NAMES[self.kind]

    @property
    def security(self) -> str:
        return "SSL/TLS" if self.implicit_tls else "STARTTLS"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded state of the inventory."""

    inventory: Inventory
    session: BuildSession

    def account(self, address: str) -> tuple[Domain, Account] | None:
        local, _, domain_name = address.lower().rpartition("@")
        domain = self.inventory.domains.get(domain_name)
        if domain is None or not local:
            return None
        for account in domain.accounts:
            if domain.address_of(account.name).lower() == address.lower():
                return domain, account
        return None

    def admin_domains(self, address: str, server_admin: bool) -> list[str]:
        if server_admin:
            return sorted(self.inventory.domains)
        return sorted(
            name
            for name, domain in self.inventory.domains.items()
            if address.lower() in (a.lower() for a in domain.admins)
        )

    def client_settings(self, domain: str) -> list[ClientSetting]:
        """What a mail client needs, from the services `mailcfg dns` publishes (SRV), per
        host serving the domain; implicit TLS first within a protocol."""
        plan: DnsPlan = self.session.dns_plan()
        settings = []
        for domain_plan in plan.domains:
            if domain_plan.domain != domain:
                continue
            for host in domain_plan.hosts:
                for label, port in host.services:
                    if label in SERVICES:
                        kind, implicit = SERVICES[label]
                        settings.append(ClientSetting(kind, host.hostname, port, implicit))
        return settings


class Directory:
    """The current `Snapshot`, loaded again when the working copy changed."""

    def __init__(
        self, store: GitInventory, roles_dir: Path | None = None, cache_dir: Path | None = None
    ) -> None:
        self.store = store
        self.roles_dir = roles_dir
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._snapshot: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """Raises the loader's `InventoryError` when the working copy is invalid."""
        key = self._signature()
        with self._lock:
            if self._snapshot is None or key != self._key:
                session = BuildSession.open(
                    self.store.inventory,
                    roles_dir=self.roles_dir,
                    cache_dir=self.cache_dir,
                    warn=lambda _line: None,
                )
                self._snapshot = Snapshot(session.load().inventory, session)
                self._key = key
            return self._snapshot

    def _signature(self) -> tuple[object, ...]:
        root = self.store.inventory
        parts: list[object] = [self.store.head()]
        for directory in (root, root / DOMAINS_DIR):
            with os.scandir(directory) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    info = entry.stat(follow_symlinks=False)
                    parts.append((entry.name, info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(parts)
