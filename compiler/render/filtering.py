"""The filtering roles' part of a host's template context: which of rspamd, ClamAV and postsrsd
the host runs, its DKIM selector and key files, the domains it signs for, the SRS domain,
and the Redis rspamd keeps Bayes in.

One place derives them so that main.cf (the milter and SRS lines), the roles' files and their
commands, observe (which public keys to read back) and `mailcfg dns` agree.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from datetime import date
from urllib.parse import urlsplit

from compiler.render.resolve import HostConfig
from schemas.policy import ServerPolicy

RSPAMD_ROLE = "rspamd"
CLAMAV_ROLE = "clamav"
SRS_ROLE = "srs"
RSPAMD_GROUP = "_rspamd"
LOOPBACK = "127.0.0.1"
_SELECTOR_CHARS = re.compile(r"[^a-z0-9-]")
_REDIS_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def uses_rspamd(policy: ServerPolicy) -> bool:
    """Whether the policy asks for anything rspamd does."""
    return bool(policy.dkim or policy.dmarc or policy.spam_actions or policy.antivirus)


def filter_role_names(cfg: HostConfig) -> set[str]:
    """The filtering roles the host's policy asks for (`host_role_names` adds them only beside
    postfix); SRS needs a served domain to rewrite into."""
    policy = cfg.policy
    names = set()
    if uses_rspamd(policy):
        names.add(RSPAMD_ROLE)
    if policy.antivirus:
        names.add(CLAMAV_ROLE)
    if policy.srs and srs_domain(cfg) is not None:
        names.add(SRS_ROLE)
    return names


def dkim_selector(prefix: str, host: str) -> str:
    """The host's selector: the inventory's prefix and the host's name as one DNS label part
    (lower case; a character a selector may not have becomes '-')."""
    return f"{prefix}-{_SELECTOR_CHARS.sub('-', host.lower())}"


@dataclass(frozen=True, slots=True)
class DkimKeyFiles:
    """One key of the host: its selector, the private key and the public record beside it
    (what `rspamadm dkim_keygen` prints, which observe reads back)."""

    selector: str
    key_path: str
    record_path: str
    retired: date | None = None  # a retired key: the day it stopped signing (None: unknown)
    prefix: str = ""  # the inventory's selector (the first part of `selector`)


@dataclass(frozen=True, slots=True)
class DkimSigning:
    """The host's DKIM keys: the current one, the next one while a rotation is under way
    (`rotate`), those whose records are still published (`retired_selectors`, kept
    `keep_days` after their day), the algorithm of new keys, and the domains it signs for
    (served and alias domains)."""

    signing: DkimKeyFiles
    algorithm: str
    domains: tuple[str, ...]
    upcoming: DkimKeyFiles | None = None
    retired: tuple[DkimKeyFiles, ...] = ()
    keep_days: int = 7

    @property
    def selector(self) -> str:
        return self.signing.selector

    @property
    def key_path(self) -> str:
        return self.signing.key_path

    @property
    def to_make(self) -> tuple[DkimKeyFiles, ...]:
        """The keys `build` makes when missing (never a retired one), which are also the keys
        rspamd signs with, each only while the DNS serves its public key (`check_pubkey`)."""
        return (self.signing, *([self.upcoming] if self.upcoming else []))

    @property
    def published(self) -> tuple[DkimKeyFiles, ...]:
        """The keys whose records `mailcfg dns` prints."""
        return (*self.to_make, *self.retired)


def make_dkim_signing(cfg: HostConfig) -> DkimSigning | None:
    dkim = cfg.policy.dkim
    if dkim is None:
        return None

    def files(prefix: str, retired: date | None = None) -> DkimKeyFiles:
        selector = dkim_selector(prefix, cfg.name)
        base = posixpath.join(cfg.policy.paths.rspamd_dkim_dir, selector)
        return DkimKeyFiles(selector, f"{base}.key", f"{base}.txt", retired, prefix)

    domains = tuple(sorted({*cfg.domain_names, *cfg.alias_domains}))
    return DkimSigning(
        signing=files(dkim.selector),
        algorithm=dkim.algorithm.value,
        domains=domains,
        upcoming=files(dkim.rotate.selector) if dkim.rotate else None,
        retired=tuple(files(r.selector, r.retired) for r in dkim.retired_selectors),
        keep_days=dkim.retired_keep_days,
    )


@dataclass(frozen=True, slots=True)
class RedisServer:
    """Where rspamd keeps Bayes and its per-user state: the agent's Redis (policy_state)."""

    server: str  # host:port, or a socket path
    db: str
    password: str | None


def make_redis_server(dsn: str) -> RedisServer | None:
    """The Redis of a `redis://[:PASSWORD@]HOST:PORT/DB` or `unix://PATH` state DSN; None for
    SQLite or a form rspamd's UCL could not hold as one quoted word."""
    if dsn.startswith("unix://"):
        path = dsn.removeprefix("unix://").partition("?")[0]
        ok = re.fullmatch(r"(/[A-Za-z0-9._+-]+)+", path)
        return RedisServer(path, "0", None) if ok else None
    if not dsn.startswith("redis://"):
        return None
    try:
        parts = urlsplit(dsn)
        port = parts.port or 6379
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2].rsplit(":", 1)[0] if parts.port else parts.hostname
    db = parts.path.strip("/") or "0"
    password = parts.password
    if not host or not _REDIS_HOST.fullmatch(host) or not db.isdigit():
        return None
    if password is not None and not re.fullmatch(r"[A-Za-z0-9._~+/=-]{1,200}", password):
        return None
    return RedisServer(f"{host}:{port}", db, password)


def srs_domain(cfg: HostConfig) -> str | None:
    """The domain SRS addresses are in: the host's first served domain (its MX and SPF name
    this host, and Postfix accepts the bounces to it). None without served domains."""
    return cfg.domain_names[0] if cfg.domain_names else None


def make_spam_learning(cfg: HostConfig) -> list[dict[str, str]]:
    """The Dovecot IMAPSieve scripts and programs that teach rspamd's Bayes what users file
    as Junk (one item per kind: the dovecot role renders a script and a program for each);
    empty unless `policy.bayes.learn_from_junk` and the host runs Dovecot beside rspamd."""
    bayes = cfg.policy.bayes
    if bayes is None or not bayes.learn_from_junk:
        return []
    if "dovecot" not in {str(r) for r in cfg.spec.roles}:
        return []
    return [{"kind": "spam"}, {"kind": "ham"}]


def make_filter_context(cfg: HostConfig) -> dict[str, object]:
    """The context entries the filtering roles and main.cf use."""
    policy = cfg.policy
    has_postfix = "postfix" in {str(r) for r in cfg.spec.roles}
    rspamd = has_postfix and uses_rspamd(policy)
    redis = make_redis_server(policy.policy_state) if rspamd else None
    return {
        "rspamd": rspamd,
        "milter": f"inet:{LOOPBACK}:{policy.filter_ports.rspamd_proxy}" if rspamd else None,
        "dkim_signing": make_dkim_signing(cfg) if rspamd else None,
        "redis": redis,
        "spam_learning": make_spam_learning(cfg) if redis else [],
        "srs": has_postfix and policy.srs and srs_domain(cfg) is not None,
        "srs_domain": srs_domain(cfg),
        "loopback": LOOPBACK,
        "rspamd_group": RSPAMD_GROUP,
    }
