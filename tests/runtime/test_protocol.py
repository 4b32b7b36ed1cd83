"""Policy protocol framing: splits, pipelining, '=' in values, malformed and oversized input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.policy.protocol import ProtocolError, RequestParser, format_reply, parse_request

REQ = b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@b.org\n\n"


def test_one_request() -> None:
    assert RequestParser().feed(REQ) == [
        {"request": "smtpd_access_policy", "protocol_state": "RCPT", "sender": "a@b.org"}
    ]


def test_split_at_every_byte() -> None:
    for cut in range(1, len(REQ)):
        p = RequestParser()
        assert p.feed(REQ[:cut]) == []
        assert p.feed(REQ[cut:])[0]["sender"] == "a@b.org"
        assert p.pending == 0


def test_byte_by_byte() -> None:
    p = RequestParser()
    got = [r for b in REQ * 3 for r in p.feed(bytes([b]))]
    assert len(got) == 3


def test_pipelined_in_one_read() -> None:
    p = RequestParser()
    got = p.feed(REQ * 5 + REQ[:10])
    assert len(got) == 5
    assert len(p.feed(REQ[10:])) == 1


def test_value_with_equals_and_empty_value() -> None:
    r = parse_request(b"sender=SRS0=HHH=TT=example.org=alice@fwd.net\nsasl_username=\n")
    assert r == {"sender": "SRS0=HHH=TT=example.org=alice@fwd.net", "sasl_username": ""}


def test_unknown_attributes_kept_for_caller_to_ignore() -> None:
    assert RequestParser().feed(b"future_attr=1\nsender=x@y.org\n\n") == [
        {"future_attr": "1", "sender": "x@y.org"}
    ]


def test_crlf_tolerated() -> None:
    assert RequestParser().feed(b"sender=a@b.org\r\n\n")[0]["sender"] == "a@b.org"


def test_non_utf8_kept() -> None:
    r = RequestParser().feed(b"sender=\xff@b.org\n\n")[0]
    assert r["sender"].encode("utf-8", "surrogateescape") == b"\xff@b.org"


@pytest.mark.parametrize(
    "data,msg",
    [
        (b"no equals sign\n\n", "without '='"),
        (b"=value\n\n", "without a name"),
        (b"\n", "empty request"),
        (REQ + b"\n", "empty request"),
    ],
)
def test_malformed(data: bytes, msg: str) -> None:
    with pytest.raises(ProtocolError, match=msg):
        RequestParser().feed(data)


def test_oversized_without_terminator() -> None:
    p = RequestParser(max_request=100)
    p.feed(b"a=" + b"x" * 90)
    with pytest.raises(ProtocolError, match="larger than 100"):
        p.feed(b"x" * 20)


def test_oversized_complete_request() -> None:
    with pytest.raises(ProtocolError, match="larger than 100"):
        RequestParser(max_request=100).feed(b"a=" + b"x" * 200 + b"\n\n")


def test_format_reply() -> None:
    assert format_reply("DUNNO") == b"action=DUNNO\n\n"
    assert format_reply("REJECT 5.7.1 no") == b"action=REJECT 5.7.1 no\n\n"
    with pytest.raises(ValueError):
        format_reply("DUNNO\n\naction=OK")
    with pytest.raises(ValueError):
        format_reply("")


_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=20)
_values = st.text(
    st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(
    reqs=st.lists(st.dictionaries(_names, _values, min_size=1, max_size=8), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_fuzz_roundtrip_any_split(reqs: list[dict[str, str]], cuts: list[int]) -> None:
    data = b"".join(b"".join(f"{k}={v}\n".encode() for k, v in r.items()) + b"\n" for r in reqs)
    p = RequestParser(max_request=1 << 20)
    got: list[dict[str, str]] = []
    prev = 0
    for c in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        got += p.feed(data[prev:c])
        prev = c
    assert got == reqs
    assert p.pending == 0


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=300))
def test_fuzz_garbage_only_protocol_errors(data: bytes, cut: int) -> None:
    p = RequestParser(max_request=64)
    try:
        for r in p.feed(data[:cut]) + p.feed(data[cut:]):
            assert all(isinstance(k, str) and k for k in r)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(req=st.dictionaries(_names, _values, min_size=1, max_size=8), junk=st.binary(max_size=40))
def test_fuzz_whole_request_per_read_same_as_split(req: dict[str, str], junk: bytes) -> None:
    # The one-request-per-read fast path and the general path agree, errors included.
    for data in (b"".join(f"{k}={v}\n".encode() for k, v in req.items()) + b"\n", junk + b"\n\n"):
        outcomes = []
        for chunks in ([data], [data[:1], data[1:]]):
            p = RequestParser(max_request=64)
            try:
                outcomes.append([r for c in chunks for r in p.feed(c)])
            except ProtocolError as exc:
                outcomes.append([{"error": str(exc)}])
        assert outcomes[0] == outcomes[1]
