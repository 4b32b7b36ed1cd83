"""Postfix SMTP access policy delegation protocol: pure framing, parsing and replies.

A request is `name=value` lines each ending in LF, closed by an empty line. The value is
everything after the first `=` (SRS addresses and `ccert_subject` contain `=`). Names are kept
as sent; unknown ones are the caller's business to ignore. A request larger than `max_request`
bytes, a line without `=`, an empty name or an empty request is a `ProtocolError`: the server
logs it and closes the connection. The reply is `action=<action>` plus an empty line.
"""

from __future__ import annotations

MAX_REQUEST = 16 * 1024  # Postfix's requests are well under 2 KiB; 16 KiB leaves room.
MAX_ACTION = 4096


class ProtocolError(ValueError):
    """The peer did not speak the policy protocol; the connection must be closed."""


class RequestParser:
    """Incremental parser: `feed(bytes)` returns every request completed by that chunk, in
    order, whether a request arrives in many reads or many requests in one read."""

    __slots__ = ("_buf", "max_request")

    def __init__(self, max_request: int = MAX_REQUEST) -> None:
        self._buf = b""
        self.max_request = max_request

    @property
    def pending(self) -> int:
        """Bytes of an incomplete request held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, str]]:
        if (
            not self._buf
            and len(data) > 2
            and data.find(b"\n\n") == len(data) - 2
            and data[:1] != b"\n"
        ):
            # One whole request in one read: what a client waiting for each answer sends.
            if len(data) - 2 > self.max_request:
                raise ProtocolError(f"request larger than {self.max_request} bytes")
            return [parse_request(data[:-1])]
        buf = self._buf + data if self._buf else data
        out: list[dict[str, str]] = []
        start = 0
        while True:
            if buf.startswith(b"\n", start):
                raise ProtocolError("empty request (a blank line with no attributes)")
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            if end - start > self.max_request:
                raise ProtocolError(f"request larger than {self.max_request} bytes")
            out.append(parse_request(buf[start : end + 1]))
            start = end + 2
        rest = buf[start:]
        if len(rest) > self.max_request:
            raise ProtocolError(f"request larger than {self.max_request} bytes")
        self._buf = rest
        return out


def parse_request(block: bytes) -> dict[str, str]:
    """One request's lines (each ending in LF, without the closing blank line) → attributes.

    Bytes that are not UTF-8 are kept as surrogate escapes: comparisons with config values
    (always ASCII) still work and nothing is silently replaced."""
    text = block.decode("utf-8", "surrogateescape")
    if "\r" not in text:
        # Fast path (every request from Postfix): one C-level split per line, collected in a
        # list (cheaper than feeding dict() from a generator). A line without `=` makes
        # dict() raise; an empty name shows up as the key "". Both fall through to the
        # checking loop below, which names the bad line.
        try:
            attrs = dict([line.split("=", 1) for line in text[:-1].split("\n")])
        except ValueError:
            pass
        else:
            if "" not in attrs:
                return attrs
    attrs = {}
    for line in text.split("\n")[:-1]:
        name, sep, value = line.partition("=")
        if not sep:
            raise ProtocolError(f"line without '=': {line[:80]!r}")
        if not name:
            raise ProtocolError(f"attribute without a name: {line[:80]!r}")
        if value.endswith("\r"):  # tolerate CRLF from hand-written clients
            value = value[:-1]
        attrs[name] = value
    return attrs


def format_reply(action: str) -> bytes:
    """`action=<action>\\n\\n`; an action with a line break would inject a second reply."""
    if "\n" in action or "\r" in action or len(action) > MAX_ACTION or not action:
        raise ValueError(f"invalid policy action {action[:80]!r}")
    return b"action=" + action.encode("utf-8", "surrogateescape") + b"\n\n"
