"""Constrained host-side values: paths, networks, listener and host addresses, user names,
time values, the agent's state DSN.

Paths and addresses land in shell commands run as root on the host (`roles/*/role.yml`), in
main.cf, dovecot.conf and systemd units: each type admits only characters that mean nothing to
a shell or a config parser, and a shape the daemon accepts. Every check is a full match; the
length bounds are `schemas.common`'s.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator

from schemas.common import (
    DSN_MAX,
    PATH_MAX,
    SOCKET_PATH_MAX,
    USER_NAME_MAX,
    check_length,
    describe_char,
    json_string,
    require_ascii,
    show_value,
)

# --- paths ----------------------------------------------------------------------------------

_PATH_CHARS = "letters, digits, '.', '_', '+', '-' and '/' (no spaces or shell metacharacters)"
_PATH_CHAR_RE = re.compile(r"[A-Za-z0-9._+/-]")
# Absolute and normalised: one or more "/component", no "." or ".." component, so no "//",
# no trailing "/", and never "/" itself.
_ABS_PATH_RE = re.compile(r"(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._+-]+)+")


def _bad_path_char(value: str) -> str | None:
    """The first character a path may not have, described for a message."""
    for char in value:
        if not _PATH_CHAR_RE.fullmatch(char):
            return repr(char) if char.isascii() and char.isprintable() else describe_char(char)
    return None


def _abs_path_problem(value: str) -> str:
    """Why `value` is not an absolute normalised path (the error path only)."""
    bad = _bad_path_char(value)
    if bad is not None:
        return f"it contains {bad}: a path here has only {_PATH_CHARS}"
    if not value.startswith("/"):
        return "it is not absolute (a path on the host starts with '/')"
    if value == "/":
        return "it is the root directory"
    if "//" in value:
        return "it has an empty component ('//'); write the normalised path"
    if value.endswith("/"):
        return "it ends with '/'; write the path without it"
    return "it has a '.' or '..' component; write the normalised path"


def _check_abs_path(value: str, limit: int) -> str:
    check_length(value, limit, "a path")
    if not _ABS_PATH_RE.fullmatch(value):
        raise ValueError(f"{show_value(value)} is not a usable path: {_abs_path_problem(value)}")
    return value


def check_abs_path(value: str) -> str:
    """An absolute, normalised path on the host: `/var/vmail`, not `var/vmail`, `/var//vmail`,
    `/var/vmail/`, `/var/../etc` or `/var/$(id)`."""
    return _check_abs_path(value, PATH_MAX)


def check_socket_path(value: str) -> str:
    """An absolute path that fits a Unix socket address (sun_path)."""
    return _check_abs_path(value, SOCKET_PATH_MAX)


_ROOT_RE = re.compile(r"[A-Za-z0-9._+/][A-Za-z0-9._+/-]*")


def check_host_root(value: str) -> str:
    """The local transport's root: a relative or absolute directory of this machine. Which
    directories are refused (`/`, system directories) is decided where it is used."""
    check_length(value, PATH_MAX, "a path")
    if not _ROOT_RE.fullmatch(value):
        bad = _bad_path_char(value)
        if bad is not None:
            why = f"it contains {bad}: a path here has only {_PATH_CHARS}"
        else:
            why = "it must not start with '-'" if value else "it is empty"
        raise ValueError(f"{show_value(value)} is not a usable directory: {why}")
    return value


# Control characters (Cc), line and paragraph separators (Zl, Zp), lone surrogates (Cs); the
# format characters (Cf) are checked by category, only for non-ASCII values.
_PATH_BREAKING_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def check_controller_path(value: str) -> str:
    """A file on the controller opened by paramiko (no shell): any printable path, `~` too."""
    check_length(value, PATH_MAX, "a path")
    bad = _PATH_BREAKING_RE.search(value)
    char = bad.group() if bad else None
    if char is None and not value.isascii():
        char = next((c for c in value if unicodedata.category(c) == "Cf"), None)
    if char is not None:
        raise ValueError(
            f"{show_value(value)} contains {describe_char(char)}; a path has no control or "
            "format characters"
        )
    if not value.strip():
        raise ValueError("a path must not be empty")
    return value


def check_known_hosts_path(value: str) -> str:
    """A known_hosts file on the controller. With `trust_on_first_use` mailcfg appends host
    keys to it, so its name must say it is one (`known_hosts`, `ci_known_hosts`...): an
    inventory can't turn that append into a write to ~/.bashrc or another file."""
    check_controller_path(value)
    if "known_hosts" not in value.rstrip("/").rpartition("/")[2]:
        raise ValueError(
            f"{show_value(value)} is not a known_hosts file: its name must contain "
            "'known_hosts' (mailcfg appends host keys to it on first use)"
        )
    return value


# --- users ----------------------------------------------------------------------------------

_USER_RE = re.compile(r"[a-z_][a-z0-9_-]*")


def check_user_name(value: str) -> str:
    """A POSIX user name as Debian's useradd accepts it by default (no trailing '$')."""
    require_ascii(value, "a user name is ASCII")
    check_length(value, USER_NAME_MAX, "a user name")
    if not _USER_RE.fullmatch(value):
        raise ValueError(
            f"{show_value(value)} is not a user name: lower-case letters, digits, '_' and '-', "
            "starting with a letter or '_'"
        )
    return value


# --- addresses and networks -----------------------------------------------------------------

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# What may be an IP address: no "%" (ipaddress accepts any IPv6 scope id after it).
_IP_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]+")
_IPV4_CHARS_RE = re.compile(r"[0-9.]+")


def _host_or_ip(value: str) -> str | None:
    """`value` as an IP address or lower-case host name, or None."""
    if (
        value.isascii()
        and _IP_CHARS_RE.fullmatch(value)
        and (":" in value or _IPV4_CHARS_RE.fullmatch(value))
    ):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return None
    v = value.lower()
    if value.isascii() and len(v) <= 253 and _HOST_NAME_RE.fullmatch(v):
        return v
    return None


def check_host_address(value: str) -> str:
    """Where a host is reached: an IPv4 or IPv6 address (no brackets) or a host name."""
    found = _host_or_ip(value)
    if found is None:
        raise ValueError(
            f"{show_value(value)} is not an IP address or host name (IPv6 without brackets; "
            "host names of ASCII letters, digits, '-' and '.')"
        )
    return found


def check_listen_address(value: str) -> str:
    """Where a service listens: `all`, an IPv4 or IPv6 address (no brackets) or a host name."""
    if value == "all":
        return value
    found = _host_or_ip(value)
    if found is None:
        raise ValueError(
            f"{show_value(value)} is not a listener address: 'all', an IPv4 or IPv6 address "
            "(no brackets) or a host name"
        )
    return found


def _host_port_problem(value: str) -> bool:
    """True unless `value` is HOST:PORT, HOST an IP address (IPv6 in brackets) or host name."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address without brackets: where does the port start?
        return True
    if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        return True
    return _host_or_ip(host) is None


def check_smtp_endpoint(value: str) -> str:
    """An SMTP server the agent submits to: HOST:PORT (IPv6 in brackets)."""
    if _host_port_problem(value):
        raise ValueError(f"{show_value(value)} is not HOST:PORT (IPv6 in brackets)")
    return value


def check_policy_listen(value: str) -> str:
    """Where the agent's policy service listens: `unix:/ABS/PATH` or `tcp:HOST:PORT`."""
    if value.startswith("unix:"):
        return "unix:" + check_socket_path(value[5:])
    if not value.startswith("tcp:") or _host_port_problem(value[4:]):
        raise ValueError(
            f"{show_value(value)} is not a listen address: unix:/PATH or tcp:HOST:PORT "
            "(IPv6 in brackets)"
        )
    return value


# The narrowest prefix a trusted network may have: a client inside may relay without
# authentication, so anything wider is most of the internet.
TRUSTED_MIN_PREFIX = {4: 8, 6: 32}
# IPv6 addresses that stand for IPv4 ones: an IPv6 network over them is an IPv4 network too.
IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NETWORK_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<bare>[0-9A-Fa-f:.]+))(?P<len>/\d+)?")


def _addresses(bits: int) -> str:
    return f"{2**bits:,}" if bits <= 32 else f"2^{bits}"


def check_trusted_network(value: str) -> str:
    """A `trusted_networks` entry, returned in the form Postfix's mynetworks reads
    (`192.0.2.0/24`, `[2001:db8::]/32`). See `ServerPolicy.trusted_networks`."""
    m = _NETWORK_RE.fullmatch(value) if value.isascii() else None
    try:
        if m is None:
            raise ValueError("only digits, hex digits, '.', ':', '/' and brackets")
        text = f"{m['v6'] or m['bare']}{m['len'] or ''}"
        # Breadth first (what it would open), then the exact form.
        net = ipaddress.ip_network(text, strict=False)
        if m["v6"] is not None and net.version != 6:
            raise ValueError("brackets are for IPv6 only")
    except ValueError as exc:
        raise ValueError(
            f"{show_value(value)} is not a network (a.b.c.d/n or [v6]/n): {exc}"
        ) from None
    _check_breadth(value, net)
    postfix_form = str(net) if net.version == 4 else f"[{net.network_address}]/{net.prefixlen}"
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{value} is not a network: {exc} (write {postfix_form}, or the address alone for "
            "one host)"
        ) from None
    return postfix_form


def _check_breadth(value: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    if net.prefixlen == 0:
        raise ValueError(
            f"{value} is every IPv{net.version} address: every client on the internet could "
            "relay through the server without authentication (an open relay)"
        )
    least = TRUSTED_MIN_PREFIX[net.version]
    if net.prefixlen < least:
        raise ValueError(
            f"{value} is too broad: it would let {_addresses(net.max_prefixlen - net.prefixlen)} "
            "addresses relay without authentication; a trusted network is an IPv4 /8 or an "
            "IPv6 /32 or narrower"
        )
    if net.version == 6 and net.overlaps(IPV4_MAPPED) and net.prefixlen < 96 + 8:
        bits = 32 - max(net.prefixlen - 96, 0)
        raise ValueError(
            f"{value} covers IPv4-mapped addresses (::ffff:0:0/96): it would let "
            f"{_addresses(bits)} IPv4 addresses relay without authentication; an IPv4 "
            "network here is a /8 or narrower"
        )


_NAMESERVER_RE = re.compile(
    r"(?P<v4>[0-9.]+)(?::(?P<p4>\d{1,5}))?"
    r"|\[(?P<b6>[0-9A-Fa-f:.]+)\](?::(?P<p6>\d{1,5}))?"
    r"|(?P<v6>[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)"
)


def check_nameserver(value: str) -> str:
    """A DNS server by IP address: `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53` or
    `[2001:db8::53]:5353` (no host names: resolving the resolver would need a resolver)."""
    m = _NAMESERVER_RE.fullmatch(value) if value.isascii() else None
    ok = m is not None
    if m is not None:
        port = m["p4"] or m["p6"]
        try:
            ipaddress.ip_address(m["v4"] or m["b6"] or m["v6"])
        except ValueError:
            ok = False
        ok = ok and (port is None or 1 <= int(port) <= 65535)
    if not ok:
        raise ValueError(
            f"{show_value(value)} is not a name server: an IP address, optionally with a port "
            "(192.0.2.53:5353, [2001:db8::53]:5353)"
        )
    return value


_RANGE_RE = re.compile(r"[0-9.]+(?:-[0-9.]+|/\d{1,2})?")


def check_dnsbl_range(value: str) -> str:
    """DNSBL answers that mean "listed": `127.0.0.2`, `127.0.0.2-127.0.0.254` or
    `127.0.0.0/24` (IPv4, as DNSBL answers are)."""
    why = "an IPv4 address, a range a.b.c.d-e.f.g.h or a network a.b.c.d/n"
    if not (value.isascii() and _RANGE_RE.fullmatch(value)):
        raise ValueError(f"{show_value(value)} is not a DNSBL answer range: {why}")
    try:
        if "-" in value:
            low, high = (ipaddress.IPv4Address(v) for v in value.split("-"))
            if low > high:
                raise ValueError(f"{low} is above {high}")
        elif "/" in value:
            ipaddress.IPv4Network(value, strict=True)
        else:
            ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ValueError(
            f"{show_value(value)} is not a DNSBL answer range ({why}): {exc}"
        ) from None
    return value


# --- time values, protocols, DSN ------------------------------------------------------------

_POSTFIX_TIME_RE = re.compile(r"\d{1,9}[smhdw]?")
_DOVECOT_TIME_RE = re.compile(
    r"\d{1,9} ?(?:ms|msecs?|s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?|w|weeks?)?"
)


def check_postfix_time(value: str) -> str:
    """A Postfix time value: a number with an optional unit (s, m, h, d, w)."""
    if not (value.isascii() and _POSTFIX_TIME_RE.fullmatch(value)):
        raise ValueError(
            f"{show_value(value)} is not a Postfix time: digits and an optional unit s, m, h, "
            "d or w (180s, 5m)"
        )
    return value


def check_dovecot_time(value: str) -> str:
    """A Dovecot time value: a number with an optional unit (ms, s, m, h, d, w, or words)."""
    if not (value.isascii() and _DOVECOT_TIME_RE.fullmatch(value)):
        raise ValueError(
            f"{show_value(value)} is not a Dovecot time: digits and an optional unit ms, s, m, "
            "h, d or w (2s, 500ms)"
        )
    return value


# Older protocols are deprecated (RFC 8996) and refused by Debian's OpenSSL defaults.
TlsProtocol = Literal["TLSv1.2", "TLSv1.3"]

_DSN_RE = re.compile(r"(?:sqlite:|redis://|rediss://|unix://)[!-~]+")


def check_state_dsn(value: str) -> str:
    """The agent's state store, as `runtime.state.open` reads it: `sqlite:///PATH`,
    `sqlite:PATH`, `redis://HOST:PORT/DB`, `rediss://...` or `unix://...`."""
    check_length(value, DSN_MAX, "a state DSN")
    sqlite_path = value.removeprefix("sqlite:").removeprefix("//")
    if not (value.isascii() and _DSN_RE.fullmatch(value)) or not sqlite_path:
        raise ValueError(
            f"{show_value(value)} is not a state DSN: sqlite:///PATH, redis://HOST:PORT/DB, "
            "rediss://... or unix://..., printable ASCII without spaces"
        )
    return value


# For editors: absolute, of path characters (the validator also refuses "." and ".."
# components and the rest of `_abs_path_problem`).
AbsPath = Annotated[
    str, AfterValidator(check_abs_path), json_string("(?:/[A-Za-z0-9._+-]+)+", PATH_MAX)
]
SocketPath = Annotated[str, AfterValidator(check_socket_path)]
HostRoot = Annotated[str, AfterValidator(check_host_root)]
ControllerPath = Annotated[str, AfterValidator(check_controller_path)]
KnownHostsPath = Annotated[str, AfterValidator(check_known_hosts_path)]
UserName = Annotated[str, AfterValidator(check_user_name)]
HostAddress = Annotated[str, AfterValidator(check_host_address)]
ListenAddress = Annotated[str, AfterValidator(check_listen_address)]
TrustedNetwork = Annotated[str, AfterValidator(check_trusted_network)]
Nameserver = Annotated[str, AfterValidator(check_nameserver)]
DnsblRange = Annotated[str, AfterValidator(check_dnsbl_range)]
PostfixTime = Annotated[str, AfterValidator(check_postfix_time)]
DovecotTime = Annotated[str, AfterValidator(check_dovecot_time)]
StateDsn = Annotated[str, AfterValidator(check_state_dsn)]
SmtpEndpoint = Annotated[str, AfterValidator(check_smtp_endpoint)]
PolicyListen = Annotated[str, AfterValidator(check_policy_listen)]
