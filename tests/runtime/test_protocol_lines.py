"""parse_request's fast path (the shape of the lines seen in their LFs and `=`s alone) accepts
exactly the blocks the line-by-line rule accepts, with the same attributes, and refuses the
rest with a ProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.policy.protocol import ProtocolError, parse_request


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
