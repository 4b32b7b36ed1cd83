"""format_plan: every format, sensitive content never shown, binary-safe, summary counts."""

from __future__ import annotations

import json

import pytest

from compiler.push.plan import make_plan
from compiler.push.show import FORMATS, format_plan, summarize_plan
from compiler.types import (
    Activation,
    ChangeKind,
    FileChange,
    FileTree,
    HostState,
    ManagedFile,
    ObservedFile,
    Plan,
    RenderedFile,
)

SECRET_OLD = b"{BLF-CRYPT}$2y$12$OLDSECRETOLDSECRET"
SECRET_NEW = b"{BLF-CRYPT}$2y$12$NEWSECRETNEWSECRET"


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


ACTIVATIONS = tuple(Activation(r, r, "reload") for r in ("", "dovecot", "postfix"))


def sample_plan() -> Plan:
    """One of each: create, update, sensitive update, meta-only, drift, delete, binary."""
    users_old = b"alice@example.com:" + SECRET_OLD + b"\n"
    users_new = b"alice@example.com:" + SECRET_NEW + b"\n"
    tree = FileTree(
        {
            "/etc/postfix/main.cf": RenderedFile(
                "/etc/postfix/main.cf", b"a = 1\nb = 2\n", role="postfix"
            ),
            "/etc/postfix/new.cf": RenderedFile("/etc/postfix/new.cf", b"new\n", role="postfix"),
            "/etc/dovecot/users": RenderedFile(
                "/etc/dovecot/users", users_new, 0o640, role="dovecot", sensitive=True
            ),
            "/etc/dovecot/meta": RenderedFile("/etc/dovecot/meta", b"m\n", 0o600, role="dovecot"),
            "/etc/ssl/blob": RenderedFile("/etc/ssl/blob", b"\x00\x01\xff", role="postfix"),
        }
    )
    live = {
        "/etc/postfix/main.cf": b"a = 1\nb = 1\nhand = edit\n",
        "/etc/dovecot/users": users_old,
        "/etc/dovecot/meta": b"m\n",
        "/etc/ssl/blob": b"\x00\x02",
        "/etc/postfix/old.cf": b"old\n",
    }
    state = HostState(
        "r1",
        {
            p: ObservedFile(_sha(c), 0o640 if "users" in p else 0o644, "root", "root")
            for p, c in live.items()
        },
        {
            "/etc/postfix/main.cf": live["/etc/postfix/main.cf"],
            "/etc/ssl/blob": live["/etc/ssl/blob"],
            "/etc/postfix/old.cf": live["/etc/postfix/old.cf"],
        },
        {
            "/etc/postfix/main.cf": ManagedFile(_sha(b"a = 1\nb = 1\n"), 0o644, "root", "root"),
            "/etc/dovecot/users": ManagedFile(_sha(users_old), 0o640, "root", "root", "dovecot"),
            "/etc/postfix/old.cf": ManagedFile(_sha(b"old\n"), 0o644, "root", "root", "postfix"),
        },
    )
    return make_plan("mx1", tree, state, ACTIVATIONS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sensitive_content_never_shown(fmt: str) -> None:
    text = format_plan(sample_plan(), fmt)  # type: ignore[arg-type]
    for secret in (SECRET_OLD, SECRET_NEW, b"OLDSECRET", b"NEWSECRET"):
        assert secret.decode() not in text
    if fmt != "summary":
        assert "/etc/dovecot/users" in text


def test_sensitive_content_not_in_plan_object() -> None:
    assert b"SECRET" not in repr(sample_plan()).encode()


def test_diff_format() -> None:
    text = format_plan(sample_plan(), "diff")
    assert text.startswith("=== mx1: 1 to create, 4 to update, 1 to delete")
    assert "(1 changed by hand on the host)" in text
    assert "--- a/etc/postfix/main.cf\n+++ b/etc/postfix/main.cf\n" in text
    assert "-b = 1\n-hand = edit\n+b = 2\n" in text
    assert "DRIFT" in text
    assert "--- /dev/null\n+++ b/etc/postfix/new.cf\n" in text
    assert "--- a/etc/postfix/old.cf\n+++ /dev/null\n" in text
    assert "--- update /etc/dovecot/users (dovecot; sensitive: content hidden)\n" in text
    assert "(sensitive: content hidden)\n" in text
    assert "0644 root:root -> 0600 root:root" in text
    assert "(binary content changed: 2 bytes -> 3 bytes)" in text
    assert "; then reload dovecot if running, reload postfix if running\n" in text


def test_summary_format() -> None:
    assert format_plan(sample_plan(), "summary").count("\n") == 1
    empty = Plan("mx2", (), (), "d", "r1")
    assert summarize_plan(empty) == "mx2: no changes"


def test_json_format_is_machine_readable() -> None:
    doc = json.loads(format_plan(sample_plan(), "json"))
    kinds = {c["path"]: c["kind"] for c in doc["changes"]}
    assert kinds["/etc/postfix/old.cf"] == "delete"
    assert kinds["/etc/postfix/new.cf"] == "create"
    users = next(c for c in doc["changes"] if c["path"] == "/etc/dovecot/users")
    assert users["sensitive"] and users["diff"] == "(sensitive: content hidden)\n"
    assert [a["role"] for a in doc["activations"]] == ["dovecot", "postfix"]
    assert doc["activations"][0]["does"] == "reload dovecot if running"
    assert doc["runs_services"] is True


def test_markdown_format_fences_diffs() -> None:
    text = format_plan(sample_plan(), "markdown")
    assert text.startswith("### `mx1`")
    assert "```diff\n--- a/etc/postfix/main.cf" in text


def test_missing_newline_and_unknown_before() -> None:
    change = FileChange("/f", ChangeKind.UPDATE, None, b"no newline", role="r")
    text = format_plan(Plan("h", (change,), (), "d", None), "diff")
    assert "(previous content not available from the host)" in text
    assert "+no newline\n\\ No newline at end of file\n" in text


def test_interrupted_apply_is_shown() -> None:
    plan = Plan("h", (), (Activation("postfix", "postfix", "reload"),), "d", "r1")
    assert "resuming an interrupted apply" in format_plan(plan, "summary")


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown plan format"):
        format_plan(sample_plan(), "yaml")  # type: ignore[arg-type]
