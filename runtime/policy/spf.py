"""SPF evaluation with pyspf, answered through our own resolver (the configured nameservers).

pyspf resolves through a module-level function bound to dnspython's default resolver (the
system's `/etc/resolv.conf`). `_Query` overrides its one lookup method instead, so the check
uses the agent's resolver — no global patching, and tests point it at a loopback DNS server.
pyspf is synchronous: `SpfChecker.check` runs it in a worker thread, bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import spf

from runtime.policy.dnsbl import configure_resolver

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # pass fail softfail neutral none permerror temperror
    explanation: str
    header: str  # "Received-SPF: ..." line


def make_sync_resolver(nameservers: Sequence[str], timeout: float) -> dns.resolver.Resolver:
    """A blocking resolver for pyspf (see `runtime.policy.dnsbl.configure_resolver`)."""
    res = dns.resolver.Resolver(configure=not nameservers)
    configure_resolver(res, nameservers, timeout)
    return res


class _Query(spf.query):  # type: ignore[misc]
    """pyspf query whose DNS goes through `resolver` (a dnspython Resolver)."""

    def __init__(self, resolver: dns.resolver.Resolver, **kw: Any) -> None:
        super().__init__(**kw)
        self._resolver = resolver

    def dns(
        self, name: str, qtype: str, cnames: Any = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []
        key = (name, qtype)
        if key in self.cache:
            return list(self.cache[key])
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError):
            # Not a DNS name at all (bytes that are not UTF-8, a label over 63 octets once
            # IDNA-encoded): it has no records, so SPF says "none" (RFC 7208 4.3).
            return []
        try:
            answer = self._resolver.resolve(qname, qtype, raise_on_no_answer=False)
            rrs = list(answer.rrset or ())
        except dns.resolver.NXDOMAIN:
            rrs = []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise spf.TempError(f"DNS {exc}") from exc
        out: list[Any] = []
        for rr in rrs:
            if qtype in ("A", "AAAA"):
                out.append(rr.address)
            elif qtype == "MX":
                out.append((rr.preference, rr.exchange))
            elif qtype == "PTR":
                out.append(rr.target.to_text(True))
            elif qtype in ("TXT", "SPF"):
                out.append(rr.strings)
        self.cache[key] = out
        if not out and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return out


def evaluate_spf(
    resolver: dns.resolver.Resolver, client: str, sender: str, helo: str, receiver: str
) -> SpfResult:
    """Blocking SPF check of MAIL FROM (or HELO for the null sender), RFC 7208."""
    q = _Query(resolver, i=client, s=sender, h=helo, receiver=receiver, querytime=0)
    q.timeout = resolver.lifetime
    result, _code, explanation = q.check()
    header = "Received-SPF: " + q.get_header(result, receiver)
    return SpfResult(result, str(explanation), header)


class SpfChecker:
    def __init__(self, nameservers: Sequence[str], timeout: float, receiver: str) -> None:
        self.resolver = make_sync_resolver(nameservers, timeout)
        # pyspf may do up to 10 DNS-querying mechanisms; bound the whole check.
        self.total_timeout = timeout * 4
        self.receiver = receiver

    async def check(self, client: str, sender: str, helo: str) -> SpfResult:
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(
            None, evaluate_spf, self.resolver, client, sender, helo, self.receiver
        )
        try:
            return await asyncio.wait_for(job, self.total_timeout)
        except TimeoutError:
            return SpfResult("temperror", "SPF check timed out", "")
