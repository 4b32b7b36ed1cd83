"""yamlload: the rapidyaml fast path and the ruamel path give the same YAML 1.2 data."""

from __future__ import annotations

import pytest

from compiler.load.yamlload import YamlSyntaxError, _parse_slow, load_positions, locate, parse_yaml

SAME = [
    b"a: 1\nb: yes\nc: no\nd: true\ne: false\nf: null\ng: '1'\nh: 1.5\n",
    b"a: [x, 'y', \"z\"]\nb: {c: 1, d: [2, 3]}\n",
    b"body: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    b"date: 2024-07-01\nquota: 1G\nzero: 0\nneg: -3\n",
    b"\xef\xbb\xbfa: 1\r\nb: x\r\n",
    b"name: a!b\nlist: [a+b@example.com, x]\n",
    b"s: 'it''s'\nt: \"tab\\tx\"\n",
]


@pytest.mark.parametrize("data", SAME)
def test_fast_path_matches_ruamel(data: bytes) -> None:
    result = parse_yaml(data)
    assert result.fast
    assert result.data == _parse_slow(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a: ~\n", {"a": None}),
        (b"a: True\nb: FALSE\n", {"a": True, "b": False}),
        (b"a: 0x10\nb: 0o7\n", {"a": 16, "b": 7}),
        (b"a: !!str 1\n", {"a": "1"}),
        (b"---\na: 1\n", {"a": 1}),
    ],
)
def test_constructs_the_fast_path_gets_wrong_take_the_exact_path(
    data: bytes, expected: object
) -> None:
    result = parse_yaml(data)
    assert not result.fast
    assert result.data == expected


def test_duplicate_keys_are_found_on_both_paths() -> None:
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml(b"a: 1\nb: {c: 1, c: 2}\n")
    assert (info.value.line, info.value.col) == (2, 11)


def test_syntax_error_is_quiet_and_located(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml(b"a: [1, 2\n")
    assert info.value.line == 2
    assert capfd.readouterr().err == ""  # rapidyaml's own error print is silenced


def test_invalid_utf8_is_located() -> None:
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml(b"a: 1\nb: caf\xe9\n")
    assert (info.value.line, info.value.col, info.value.message) == (
        2,
        7,
        "file is not valid UTF-8",
    )


def test_locate_keys_values_items_and_missing_keys() -> None:
    root = load_positions(b"a:\n  b: 1\n  c: [x, y]\nl:\n  - {k: v}\n")
    assert locate(root, ("a", "b")) == (2, 6)
    assert locate(root, ("a", "b"), at_key=True) == (2, 3)
    assert locate(root, ("a", "c", 1)) == (3, 10)
    assert locate(root, ("l", 0, "k")) == (5, 9)
    assert locate(root, ("l", 0, "missing")) == (5, 5)
    assert locate(root, ()) == (1, 1)
