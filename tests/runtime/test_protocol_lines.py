"""parse_request's fast path (the shape of the lines seen in their LFs and `=`s alone) accepts
exactly the blocks the line-by-line rule accepts, with the same attributes, and refuses the
rest with a ProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.policy.protocol import ProtocolError, RequestParser, parse_request


def parse_by_lines(block: bytes) -> dict[str, str] | None:
    """The rule, line by line: every line has a non-empty name and an `=`; None if not."""
    attrs = {}
    for line in block.decode("utf-8", "surrogateescape").split("\n")[:-1]:
        name, sep, value = line.partition("=")
        if not sep or not name:
            return None
        attrs[name] = value.removesuffix("\r")
    return attrs


def parse_or_none(block: bytes) -> dict[str, str] | None:
    try:
        return dict(parse_request(block))
    except ProtocolError:
        return None


@pytest.mark.parametrize(
    "block",
    [
        b"a=1\nb=2\n",
        b"a=1\nb\n",
        b"a\nb=1\n",
        b"a=1\n\nb=2\n",
        b"a==\nb=c=d\n",
        b"=a\n",
        b"a=1\n=b\n",
        b"\xff=\xfe\nb=\xc3\xa9\n",
        b"a=\xff\n\xff\n",
        b"a=1\r\nb=2\n",
    ],
)
def test_examples(block: bytes) -> None:
    assert parse_or_none(block) == parse_by_lines(block)


@settings(max_examples=2000, deadline=None)
@given(
    lines=st.lists(
        st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from([b"", b"="]),
        max_size=8,
    ),
    fill=st.sampled_from([b"", b"=", b"a=", b"\xff", b"\xc3"]),
)
def test_fuzz_same_as_line_rule(lines: list[bytes], fill: bytes) -> None:
    block = b"".join(fill + line + b"\n" for line in lines)
    assert parse_or_none(block) == parse_by_lines(block)


def feed_outcome(chunks: list[bytes]) -> list[dict[str, str]] | str:
    """What a parser fed `chunks` returns (as dicts), or its error's message."""
    p = RequestParser(max_request=64)
    try:
        return [dict(r) for c in chunks for r in p.feed(c)]
    except ProtocolError as exc:
        return str(exc)


@settings(max_examples=2000, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from(
            [b"a=1", b"b=", b"=c", b"d", b"", b"e==f", b"g=h\r", b"\xff=\xfe", b"x" * 70]
        ),
        max_size=8,
    ),
)
def test_fuzz_whole_request_check_same_as_split(lines: list[bytes]) -> None:
    # A read holding one whole request is checked by `read_whole_request` (its lines' LFs and
    # `=`s alone); fed a byte at a time the same bytes take the general path: the same
    # requests or the same error, whatever the lines (blank ones make several requests).
    data = b"".join(line + b"\n" for line in lines) + b"\n"
    assert feed_outcome([data]) == feed_outcome([data[:1], data[1:]])
