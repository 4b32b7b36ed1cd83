"""Loading a hostile inventory: no file outside it is read, no error echoes more than a line of
a file, no YAML construct makes the loader blow up (memory, recursion, time), and every refusal
is a located error, never a traceback.

Real files, real symlinks and FIFOs in a temporary directory, through `load_inventory` (the
command-line runs of the same defects are in the corpus, `bad_inventories/load-*`).
"""

from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

import pytest

from compiler.load.diagnostics import (
    MESSAGE_MAX,
    QUOTE_MAX,
    Diagnostic,
    InventoryError,
    clean_message,
)
from compiler.load.inventory import load_inventory
from compiler.load.safefiles import MAX_FILE_BYTES
from compiler.load.yamlload import MAX_DEPTH, YamlSyntaxError, load_positions, parse_yaml

BASE = Path(__file__).parent / "bad_inventories" / "_base"
LINK_ERROR = "is a symbolic link; mailcfg reads only regular files inside the inventory"

# A fake secret of the CI machine (a PEM key): no line but the first may ever be printed.
SECRET_LINES = [
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "QyNTUxOQAAACDLcuAsVE5uIiZHoP0vCWwLDnDmoaRNm7UuXy4gWqlUBQAAAJjn5+K/5+fi",
    "vwAAAAtzc2gtZWQyNTUxOQAAACDLcuAsVE5uIiZHoP0vCWwLDnDmoaRNm7UuXy4gWqlUBQ",
    "-----END OPENSSH PRIVATE KEY-----",
]
SECRET = "\n".join(SECRET_LINES) + "\n"


def make_inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "inv"
    (inv / "domains").mkdir(parents=True)
    (inv / "mailcfg.yml").write_bytes((BASE / "mailcfg.yml").read_bytes())
    src = BASE / "domains" / "example.com.yml"
    (inv / "domains" / "example.com.yml").write_bytes(src.read_bytes())
    return inv


def load_errors(inv: Path) -> list[Diagnostic]:
    with pytest.raises(InventoryError) as info:
        load_inventory(inv)
    return [d for d in info.value.diagnostics if d.severity == "error"]


def output_of(errors: list[Diagnostic]) -> str:
    return "\n".join(d.format() for d in errors)


def plant_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    return secret


def assert_no_secret(text: str) -> None:
    for line in SECRET_LINES[1:]:
        assert line[:20] not in text, text


# --- symlinks, special files, size ----------------------------------------------------------


def test_a_domain_file_linking_outside_is_refused_unread(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    (inv / "domains" / "evil.yml").symlink_to(plant_secret(tmp_path))
    errors = load_errors(inv)
    assert f"{inv}/domains/evil.yml: error: {LINK_ERROR}" in output_of(errors)
    assert_no_secret(output_of(errors))
    assert SECRET_LINES[0] not in output_of(errors)


def test_a_relative_link_escaping_by_dotdot_is_refused(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    plant_secret(tmp_path)
    (inv / "domains" / "up.yml").symlink_to("../../outside/id_ed25519")
    errors = load_errors(inv)
    assert [(d.file, d.message) for d in errors] == [(f"{inv}/domains/up.yml", LINK_ERROR)]


def test_a_link_inside_the_inventory_is_refused_too(tmp_path: Path) -> None:
    """One rule, no resolving: a link is never followed, wherever it points."""
    inv = make_inventory(tmp_path)
    (inv / "domains" / "example.org.yml").symlink_to("example.com.yml")
    errors = load_errors(inv)
    assert [(d.file, d.message) for d in errors] == [(f"{inv}/domains/example.org.yml", LINK_ERROR)]


def test_a_linked_domains_directory_is_refused_unlisted(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    outside = tmp_path / "elsewhere"
    (inv / "domains").rename(outside)
    (inv / "domains").symlink_to(outside)
    errors = load_errors(inv)
    assert f"{inv}/domains: error: {LINK_ERROR}" in output_of(errors)
    assert "example.com.yml" not in output_of(errors).replace("postmaster@example.com", "")


def test_a_linked_mailcfg_yml_is_refused(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    (inv / "mailcfg.yml").unlink()
    (inv / "mailcfg.yml").symlink_to(plant_secret(tmp_path))
    errors = load_errors(inv)
    assert f"{inv}/mailcfg.yml: error: {LINK_ERROR}" in output_of(errors)
    assert_no_secret(output_of(errors))


def test_the_inventory_directory_itself_may_be_a_link(tmp_path: Path) -> None:
    """The directory named on the command line is trusted (a checkout may live behind one)."""
    inv = make_inventory(tmp_path)
    (tmp_path / "via-link").symlink_to(inv)
    loaded = load_inventory(tmp_path / "via-link")
    assert list(loaded.inventory.domains) == ["example.com"]


def test_a_fifo_is_neither_opened_nor_waited_for(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    os.mkfifo(inv / "domains" / "pipe.yml")
    start = time.monotonic()
    errors = load_errors(inv)
    assert time.monotonic() - start < 5
    assert [(d.file, d.message) for d in errors] == [
        (
            f"{inv}/domains/pipe.yml",
            "is not a regular file (a FIFO, socket or device); mailcfg reads only regular "
            "files inside the inventory",
        )
    ]


def test_a_directory_named_like_a_domain_file_is_reported(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    (inv / "domains" / "example.org.yml").mkdir()
    errors = load_errors(inv)
    assert [d.message for d in errors] == [
        "is a directory; mailcfg reads only regular files inside the inventory"
    ]


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    big = inv / "domains" / "big.test.yml"
    with big.open("wb") as f:  # sparse: no disk or time spent
        f.truncate(MAX_FILE_BYTES + 1)
    errors = load_errors(inv)
    assert [(d.file, d.message) for d in errors] == [
        (
            f"{inv}/domains/big.test.yml",
            "the file is larger than 16 MiB, the limit for one inventory file; split it",
        )
    ]


# --- what an error may quote ----------------------------------------------------------------


def test_a_copied_secret_file_is_quoted_by_its_first_line_at_most(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    (inv / "domains" / "example.org.yml").write_text(SECRET)
    text = output_of(load_errors(inv))
    assert (
        "example.org.yml:1:1: error: expected a mapping of keys to values, found a value of "
        f"several lines; the file starts with '{SECRET_LINES[0]}'"
    ) in text
    assert_no_secret(text)


def test_a_one_megabyte_scalar_is_quoted_shortened(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    (inv / "domains" / "example.org.yml").write_text("x" * 1_000_000 + "\n")
    (errors,) = load_errors(inv)
    assert errors.message == (
        f"expected a mapping of keys to values, found the value '{'x' * QUOTE_MAX}…'"
    )


def test_a_huge_key_and_value_in_a_schema_error_are_shortened(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    base = (BASE / "domains" / "example.com.yml").read_text()
    hostile = base + f"{'k' * 200_000}: {'v' * 200_000}\n"
    (inv / "domains" / "example.com.yml").write_text(hostile)
    text = output_of(load_errors(inv))
    assert "unknown key" in text
    assert max(len(line) for line in text.splitlines()) <= 2 * MESSAGE_MAX
    assert not re.search(f"k{{{QUOTE_MAX + 1}}}", text)


def test_a_huge_duplicate_key_is_shortened(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path)
    key = "d" * 1000  # an implicit key has at most 1024 characters
    (inv / "domains" / "example.org.yml").write_text(f"{key}: 1\n{key}: 2\n")
    (error,) = load_errors(inv)
    assert error.line == 2 and error.message.startswith('duplicate key "ddd')
    assert len(error.message) < 200


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("plain message", "plain message"),
        ("the value " + repr("a" * 500), f"the value '{'a' * QUOTE_MAX}…'"),
        ("the value " + repr(SECRET), f"the value '{SECRET_LINES[0]}…'"),
        ("short 'a\\nb' stays whole", "short 'a\\nb' stays whole"),
        ("raw line\nsecond line", "raw line…"),
        ("escape \x1b[2J and \u202e", "escape \\x1b[2J and \\u202e"),
        ("the domain's value 'x'", "the domain's value 'x'"),
        ("unquoted " + "z" * 500 + " end", f"unquoted {'z' * QUOTE_MAX}… end"),
    ],
)
def test_every_message_is_cleaned(message: str, expected: str) -> None:
    assert clean_message(message) == expected
    assert Diagnostic("f", 1, 1, "", message).message == expected


def test_a_message_cut_inside_a_quoted_value_still_shortens_it() -> None:
    words = " ".join(["word"] * 100_000)
    cleaned = clean_message(f"the value {words!r} is not allowed")
    assert len(cleaned) < QUOTE_MAX + 20


def test_a_file_name_with_a_line_break_stays_on_one_line() -> None:
    d = Diagnostic("domains/a\nb.yml", None, None, "", "m")
    assert d.format() == "domains/a\\nb.yml: error: m"


# --- YAML constructs --------------------------------------------------------------------------


def billion_laughs() -> bytes:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


HOSTILE_YAML = {
    "billion laughs": (billion_laughs(), 1, 5, "anchors and aliases (&name, *name) are not"),
    "merge key": (b"a:\n  <<: {k: 1}\n", 2, 3, "merge keys (<<) are not allowed"),
    "python tag": (
        b"a: !!python/object/apply:os.system ['id']\n",
        1,
        4,
        "the tag !!python/object/apply:os.system is not allowed",
    ),
    "binary tag": (b"a: !!binary aGVsbG8=\n", 1, 4, "the tag !!binary is not allowed"),
    "local tag": (b"a: !foo bar\n", 1, 4, "the tag !foo is not allowed"),
    "10,000 [": (b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", 1, 68, "more than 64 nested"),
    "10,000 {": (b"a: " + b"{" * 10_000 + b"}" * 10_000 + b"\n", 1, 68, "more than 64 nested"),
    "1,000,000 [ unclosed": (b"a: " + b"[" * 1_000_000, 1, 68, "more than 64 nested"),
    "nested - -": (b"a:\n  " + b"- " * 10_000 + b"x\n", 2, 131, "more than 64 nested"),
    "huge number": (b"a: " + b"9" * 5000 + b"\n", 1, 4, "this number is too large"),
    "huge hex number": (b"a: 0x" + b"f" * 5000 + b"\n", 1, 4, "this number is too large"),
    "duplicate key": (b"a: 1\nb: 2\na: 3\n", 3, 1, 'duplicate key "a"'),
    "NUL": (b"a: b\x00c\n", 1, 5, "the character U+0000 is not allowed"),
    "DEL": (b"a: b\x7fc\n", 1, 5, "the character U+007F is not allowed"),
    "C1 control": ("a: b\x9bc\n".encode(), 1, 5, "the character U+009B is not allowed"),
    "invalid UTF-8": (b"a: \xff\xfe\x00garbage\n", 1, 4, "file is not valid UTF-8"),
}


@pytest.mark.parametrize("name", HOSTILE_YAML)
def test_hostile_yaml_is_a_located_error(name: str) -> None:
    data, line, col, message = HOSTILE_YAML[name]
    start = time.monotonic()
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml(data)
    assert (info.value.line, info.value.col) == (line, col)
    assert message in info.value.message
    assert time.monotonic() - start < 10
    # The positions path (used for files with findings) must survive the same input.
    load_positions(data)


def test_deeply_nested_indented_mappings_are_refused() -> None:
    data = b"".join(b" " * i + b"k:\n" for i in range(2000)) + b" " * 2000 + b"x: 1\n"
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml(data)
    assert (info.value.line, info.value.message) == (65, "more than 64 nested lists or mappings")
    assert load_positions(data) is None  # not a RecursionError


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
@pytest.mark.parametrize(
    "shape",
    [
        lambda n: b"a: " + b"[" * n + b"1" + b"]" * n,
        lambda n: b"a: " + b"[" * n + b"]" * n,
        lambda n: b"a: " + b"{k: " * n + b"1" + b"}" * n,
        lambda n: b"".join(b" " * i + b"k:\n" for i in range(n)) + b" " * n + b"x: 1",
        lambda n: b"a:\n  " + b"- " * n + b"x",
    ],
)
def test_both_parse_paths_agree_on_the_depth_limit(shape: object, depth: int) -> None:
    """The fast path (rapidyaml's emitter limit) and the slow path (the guarded composer)
    accept and refuse the same files; a `~` forces the slow path."""
    data = shape(depth - 1) + b"\n"  # type: ignore[operator]
    outcomes = []
    for variant in (data, b"z: ~\n" + data if not data.startswith(b" ") else data + b"z: ~\n"):
        try:
            parse_yaml(variant)
            outcomes.append("ok")
        except YamlSyntaxError as exc:
            outcomes.append(exc.message)
    assert outcomes[0] == outcomes[1]
    # A 65th collection passes only when it is empty (rapidyaml sees it as a leaf).
    assert outcomes[0] == "ok" or (depth == MAX_DEPTH + 1 and "nested" in outcomes[0])


def test_a_bomb_that_fails_validation_is_reported_without_expanding(tmp_path: Path) -> None:
    """Before: aliases parsed as shared objects and pydantic, the positions reader or an error
    message expanded them (9**9 strings). Now refused at the first anchor."""
    inv = make_inventory(tmp_path)
    base = (BASE / "domains" / "example.com.yml").read_bytes()
    (inv / "domains" / "example.com.yml").write_bytes(base + billion_laughs())
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (error,) = load_errors(inv)
    assert time.monotonic() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB
    assert error.message.startswith("anchors and aliases")
    assert error.line == base.count(b"\n") + 1


def test_too_many_values_are_refused() -> None:
    from compiler.load import yamlload

    data = b"a: [" + b"1," * (yamlload.MAX_NODES + 10) + b"]\n"
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml(data)
    assert "more than 1,000,000 values" in info.value.message
