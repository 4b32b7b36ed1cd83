"""DNS blacklist lookups: asynchronous A queries with a per-query timeout and a TTL cache.

The query name is the client address reversed (IPv4 octets, IPv6 nibbles) under the zone. An
answer counts as a listing only inside the list's `listed` ranges; any other answer (Spamhaus
replies 127.255.255.x to open resolvers or over-quota users) is logged as a warning and never
rejects. Timeouts and server failures are logged and treated as "not listed".
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

log = logging.getLogger(__name__)

IPRange = tuple[int, int]  # inclusive IPv4 integer range of answers that mean "listed"
_NEGATIVE_TTL = 300.0
_CACHE_MAX = 50_000


def parse_ranges(specs: Sequence[str]) -> tuple[IPRange, ...]:
    """`127.0.0.2-127.0.0.254`, `127.0.0.2` or `127.0.0.0/24` → integer ranges."""
    out: list[IPRange] = []
    for spec in specs:
        try:
            if "-" in spec:
                lo, hi = spec.split("-", 1)
                out.append((int(ipaddress.IPv4Address(lo)), int(ipaddress.IPv4Address(hi))))
            elif "/" in spec:
                net = ipaddress.IPv4Network(spec, strict=False)
                out.append((int(net.network_address), int(net.broadcast_address)))
            else:
                out.append((int(ipaddress.IPv4Address(spec)),) * 2)
        except ValueError as exc:
            raise ValueError(f"invalid DNSBL answer range {spec!r}: {exc}") from exc
    return tuple(out)


def reverse_name(client: str) -> str | None:
    """`1.2.3.4` → `4.3.2.1`; IPv6 → 32 reversed nibbles; None for what is not an address."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return ".".join(reversed(client.split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


@dataclass(frozen=True, slots=True)
class DnsblZone:
    zone: str
    listed: tuple[IPRange, ...]


def make_resolver(nameservers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
    """An asynchronous resolver (see `configure_resolver`) without dnspython's cache: ours
    keeps listings by TTL, including negative answers."""
    res = dns.asyncresolver.Resolver(configure=not nameservers)
    configure_resolver(res, nameservers, timeout)
    res.cache = None
    return res


def configure_resolver(
    res: dns.resolver.BaseResolver, nameservers: Sequence[str], timeout: float
) -> None:
    """Nameservers given: exactly those (`host` or `host:port`; `res` made without the
    system's configuration); none: the system's. Each query gives up after `timeout`."""
    if nameservers:
        res.nameservers = [
            dns.nameserver.Do53Nameserver(*split_host_port(ns, 53)) for ns in nameservers
        ]
    res.lifetime = timeout
    res.timeout = timeout


def split_host_port(spec: str, default: int) -> tuple[str, int]:
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, default


class DnsblChecker:
    """Looks a client up in every zone at once; the first zone (in config order) that lists it
    wins. Results are cached per (zone, client) for the answer's TTL."""

    def __init__(self, zones: Sequence[DnsblZone], resolver: dns.asyncresolver.Resolver) -> None:
        self.zones = tuple(zones)
        self.resolver = resolver
        self._cache: dict[str, tuple[float, bool]] = {}

    async def listing_zone(self, client: str) -> str | None:
        rev = reverse_name(client)
        if rev is None or not self.zones:
            return None
        results = await asyncio.gather(*(self._listed(rev, z) for z in self.zones))
        return next((z.zone for z, hit in zip(self.zones, results, strict=True) if hit), None)

    async def _listed(self, rev: str, zone: DnsblZone) -> bool:
        name = f"{rev}.{zone.zone}."
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            answer = await self.resolver.resolve(name, "A", raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._remember(name, False, _NEGATIVE_TTL, now)
            return False
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            log.warning(
                "DNSBL %s: lookup of %s failed (%s); treated as not listed",
                zone.zone,
                name,
                exc.__class__.__name__,
            )
            return False
        listed = False
        for rr in answer.rrset or ():
            value = int(ipaddress.IPv4Address(rr.address))
            if any(lo <= value <= hi for lo, hi in zone.listed):
                listed = True
            else:
                log.warning(
                    "DNSBL %s answered %s for %s: not a listing (error or quota code); ignored",
                    zone.zone,
                    rr.address,
                    name,
                )
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else _NEGATIVE_TTL
        self._remember(name, listed, ttl, now)
        return listed

    def _remember(self, name: str, listed: bool, ttl: float, now: float) -> None:
        if len(self._cache) >= _CACHE_MAX:
            # Drop expired entries; if the cache is still full of live ones, start over.
            live = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache = live if len(live) < _CACHE_MAX // 2 else {}
        self._cache[name] = (now + max(ttl, 1.0), listed)
