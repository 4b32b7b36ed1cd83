"""make_plan against plan cases written as data (tests/unit/plan_cases/*.json), pyinfra style:
desired files + observed host state -> expected changes and activations. Plus properties."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.push.plan import make_plan
from compiler.render.masking import mask_content
from compiler.types import (
    Activation,
    FileTree,
    HostState,
    ManagedFile,
    ObservedFile,
    RenderedFile,
)

CASES = sorted((Path(__file__).parent / "plan_cases").glob("*.json"))


def _content(spec: dict[str, Any]) -> bytes:
    if "content_b64" in spec:
        return base64.b64decode(spec["content_b64"])
    return str(spec["content"]).encode()


def _mode(spec: dict[str, Any]) -> int:
    return int(spec.get("mode", "0644"), 8)


def activations_for(roles: set[str]) -> tuple[Activation, ...]:
    return tuple(Activation(r, r, "reload", apply=(f"reload {r}",)) for r in sorted(roles))


def every_activation(tree: FileTree, state: HostState) -> tuple[Activation, ...]:
    """One activation per role the tree or the host's managed files name, as a target has."""
    roles = {f.role for f in tree.values()} | {m.role for m in state.managed.values()}
    return activations_for(roles)


def build_case(case: dict[str, Any]) -> tuple[FileTree, HostState]:
    tree = FileTree(
        {
            path: RenderedFile(
                path,
                _content(f),
                _mode(f),
                f.get("owner", "root"),
                f.get("group", "root"),
                f.get("role", ""),
                f.get("sensitive", False),
            )
            for path, f in case["desired"].items()
        }
    )
    state = case["state"]
    files, previous = {}, {}
    for path, f in state["files"].items():
        content = _content(f)
        sha = hashlib.sha256(content).hexdigest()
        files[path] = ObservedFile(sha, _mode(f), f.get("owner", "root"), f.get("group", "root"))
        want = tree.get(path)
        # What the on-host observe returns: content of non-sensitive files that differ.
        secret = (want is not None and want.sensitive) or state["managed"].get(path, {}).get(
            "sensitive", False
        )
        if (want is None or want.sha256 != sha) and not secret:
            previous[path] = content
    managed = {
        path: ManagedFile(
            hashlib.sha256(_content(m)).hexdigest(),
            _mode(m),
            m.get("owner", "root"),
            m.get("group", "root"),
            m.get("role", ""),
            m.get("sensitive", False),
        )
        for path, m in state["managed"].items()
    }
    return tree, HostState(
        state["release_id"],
        files,
        previous,
        managed,
        state.get("interrupted"),
        activations_for(set(state.get("pending", []))),
    )


@pytest.mark.parametrize("case_path", CASES, ids=[p.stem for p in CASES])
def test_plan_case(case_path: Path) -> None:
    case = json.loads(case_path.read_text())
    tree, state = build_case(case)
    plan = make_plan("mx1", tree, state, every_activation(tree, state))
    expected = case["expected"]
    assert len(plan.changes) == len(expected["changes"]), plan.changes
    for change, want in zip(plan.changes, expected["changes"], strict=True):
        assert change.path == want["path"]
        assert change.kind.value == want["kind"]
        for key in ("drift", "meta_only", "sensitive", "meta_before", "meta_after"):
            if key in want:
                assert getattr(change, key) == want[key], (change.path, key)
        for key in ("before", "after"):
            if key in want:
                value = getattr(change, key)
                assert value == (None if want[key] is None else want[key].encode()), key
            if f"{key}_b64" in want:
                assert getattr(change, key) == base64.b64decode(want[f"{key}_b64"])
    assert sorted(a.role for a in plan.activations) == expected["activations"]
    assert plan.has_changes == expected.get("has_changes", bool(expected["changes"]))
    assert plan.current_release == state.release_id
    assert plan.tree_digest == tree.digest


def test_every_case_is_valid_json_with_a_description() -> None:
    assert len(CASES) >= 12
    for path in CASES:
        case = json.loads(path.read_text())
        assert case["description"], path


def test_sensitive_bytes_never_in_plan() -> None:
    case = json.loads((Path(__file__).parent / "plan_cases" / "sensitive_update.json").read_text())
    plan = make_plan("mx1", *build_case(case), ())
    assert b"SECRET" not in repr(plan).encode()


def test_sensitive_bytes_never_in_plan_with_masked_views() -> None:
    """With the masked views a role's mask gives (desired, and recorded with the release),
    the plan carries the views and still no byte of either secret."""
    case = json.loads((Path(__file__).parent / "plan_cases" / "sensitive_update.json").read_text())
    tree, state = build_case(case)
    path = "/etc/dovecot/users"
    want = replace(tree[path], mask="passwd-file")
    old = _content(case["state"]["managed"][path])
    installed = replace(state.managed[path], shown=mask_content("passwd-file", old))
    plan = make_plan("mx1", FileTree({path: want}), replace(state, managed={path: installed}), ())
    change = plan.changes[0]
    assert change.shown_before and change.shown_after and change.shown_before != change.shown_after
    assert b"SECRET" not in repr(plan).encode()


_paths = st.sampled_from(["/etc/a", "/etc/b", "/etc/c/d", "/etc/e"])
_files = st.dictionaries(
    _paths,
    st.tuples(st.binary(max_size=8), st.sampled_from([0o644, 0o640]), st.sampled_from(["x", "y"])),
)


@given(desired=_files, live=_files, managed=_files)
def test_applying_a_plan_converges(
    desired: dict[str, tuple[bytes, int, str]],
    live: dict[str, tuple[bytes, int, str]],
    managed: dict[str, tuple[bytes, int, str]],
) -> None:
    """After doing what the plan says, planning again finds nothing to do."""
    tree = FileTree(
        {p: RenderedFile(p, c, m, "root", "root", role) for p, (c, m, role) in desired.items()}
    )

    def observed(c: bytes, m: int) -> ObservedFile:
        return ObservedFile(hashlib.sha256(c).hexdigest(), m, "root", "root")

    state = HostState(
        "r1",
        {p: observed(c, m) for p, (c, m, _) in live.items() if p in desired or p in managed},
        {},
        {
            p: ManagedFile(hashlib.sha256(c).hexdigest(), m, "root", "root", role)
            for p, (c, m, role) in managed.items()
        },
    )
    plan = make_plan("h", tree, state, every_activation(tree, state))
    assert {a.role for a in plan.activations} == {c.role for c in plan.changes}
    touched = {c.path for c in plan.changes}
    for path in set(state.files) - set(tree) - touched:
        assert path not in state.managed  # only unmanaged leftovers are left alone
    after = HostState(
        "r2",
        {p: observed(f.content, f.mode) for p, f in tree.items()},
        {},
        {p: ManagedFile(f.sha256, f.mode, "root", "root", f.role) for p, f in tree.items()},
    )
    assert not make_plan("h", tree, after, every_activation(tree, after)).has_changes
