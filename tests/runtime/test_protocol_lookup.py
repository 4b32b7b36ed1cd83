"""A parsed request reads its attributes from the text when asked (`protocol.Request`): every
lookup answers what a dict of all the lines would (last value of a repeated name, `=` in
values, names that are prefixes or suffixes of others, absent names)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.policy.protocol import Request, RequestParser, parse_request

_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_="), min_size=1, max_size=12)
_values = st.text(
    st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=40
)


def _as_dict(lines: list[tuple[str, str]]) -> dict[str, str]:
    """What a dict of the lines holds: the first `=` splits, the last line of a name wins."""
    out: dict[str, str] = {}
    for name, value in lines:
        key, _, rest = f"{name}={value}".partition("=")
        out[key] = rest
    return out


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.tuples(_names, _values), min_size=1, max_size=10),
    probes=st.lists(_names, max_size=5),
)
def test_lookups_answer_as_a_dict_of_all_lines(
    lines: list[tuple[str, str]], probes: list[str]
) -> None:
    block = "".join(f"{n}={v}\n" for n, v in lines).encode("utf-8", "surrogateescape")
    expected = _as_dict(lines)
    if "" in expected:  # a line starting with `=`: a protocol error, tested elsewhere
        return
    req = parse_request(block)
    assert isinstance(req, Request)
    assert dict(req) == expected and len(req) == len(expected)
    for name in [*expected, *probes, "", "x\ny"]:
        assert req.get(name) == expected.get(name)
        assert req.get(name, "-") == expected.get(name, "-")
        assert (name in req) == (name in expected)


def test_postfix_request_reads_its_attributes() -> None:
    block = (
        b"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsasl_username=a@b.org\n"
        b"sender=SRS0=x=y@b.org\nrecipient_count=3\nsasl_username=c@b.org\n\n"
    )
    (req,) = RequestParser().feed(block)
    assert req["sasl_username"] == "c@b.org"
    assert req.get("sender") == "SRS0=x=y@b.org"
    assert req.get("recipient_count") == "3"
    assert req.get("username") is None and req.get("count", "1") == "1"
    assert "recipient" not in req
