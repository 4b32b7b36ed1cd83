"""A small authoritative DNS server for tests (dnspython, UDP + TCP on loopback, own thread).

Records are given as `{"name.": [("TXT", "v=spf1 -all"), ("A", "127.0.0.2", ttl)]}`; a name
not present is NXDOMAIN, a present name without the asked type is NOERROR/NODATA, and names in
`silent` get no answer at all (to provoke resolver timeouts). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Record = tuple[str, str] | tuple[str, str, int]


class Zone:
    def __init__(self, records: dict[str, list[Record]], silent: Iterable[str] = ()) -> None:
        self.records = {k.lower().rstrip(".") + ".": v for k, v in records.items()}
        self.silent = {s.lower().rstrip(".") + "." for s in silent}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def answer(self, wire: bytes) -> bytes | None:
        q = dns.message.from_wire(wire)
        resp = dns.message.make_response(q)
        resp.flags |= dns.flags.AA
        question = q.question[0]
        name = question.name.to_text().lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, qtype))
        if name in self.silent:
            return None
        recs = self.records.get(name)
        if recs is None:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            return resp.to_wire()
        for rec in recs:
            rtype, value = rec[0], rec[1]
            ttl = rec[2] if len(rec) == 3 else 300  # type: ignore[misc]
            if rtype != qtype:
                continue
            if rtype == "TXT" and not value.startswith('"'):
                value = '"' + value.replace('"', '\\"') + '"'
            resp.answer.append(dns.rrset.from_text(question.name, ttl, "IN", rtype, value))
        return resp.to_wire()


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        out = self.server.zone.answer(data)  # type: ignore[attr-defined]
        if out is not None:
            sock.sendto(out, self.client_address)


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        head = sock.recv(2)
        if len(head) < 2:
            return
        size = int.from_bytes(head, "big")
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return
            data += chunk
        out = self.server.zone.answer(data)  # type: ignore[attr-defined]
        if out is not None:
            sock.sendall(len(out).to_bytes(2, "big") + out)


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def dns_server(zone: Zone, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `zone` on host:port (UDP and TCP); yields the `host:port` nameserver spec."""
    udp = _UdpServer((host, port), _Udp)
    tcp = _TcpServer((host, port), _Tcp)
    udp.zone = tcp.zone = zone  # type: ignore[attr-defined]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (udp, tcp)]
    for t in threads:
        t.start()
    try:
        yield f"{host}:{port}"
    finally:
        for s in (udp, tcp):
            s.shutdown()
            s.server_close()
