"""A sensitive file's masked view: made at render time (role.yml `mask: passwd-file`), recorded
with the release on the host, diffed by plans. Accounts, quotas and other fields are shown; a
hash never is, in any format, nor is it in the plan object; a hash that alone changed reads
`~ user: password changed`; a sensitive file without a mask stays fully hidden."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from compiler.connectors.local import LocalTransport
from compiler.push.apply import apply_plan, make_release_id
from compiler.push.observe import observe_host
from compiler.push.plan import make_plan
from compiler.push.show import FORMATS, diff_change, format_plan
from compiler.render.masking import mask_content, mask_passwd_file, parse_view
from compiler.render.roles import RoleError, load_role
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

ALICE_OLD = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"
ALICE_NEW = "{BLF-CRYPT}$2y$05$QkXm1r0bYd8w3sPzV9hLce5c7uJ2nT0aG4fK6iR1oE8yWqZxAvBMu"
BOB = (
    "{SHA512-CRYPT}$6$twnhwPGfXxvGVnRS$1b6wlTXV69fLqxD9ghiPwte5JlwAOtKhJpGN5dwqb1k/KJ3Xxz7iG/w"
    "/J1UBFcPmdUBP2era5NBobLQ0pMEUF/"
)
CAROL = "{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99"
HASHES = (ALICE_OLD, ALICE_NEW, BOB, CAROL)
QUOTA = "userdb_quota_rule=*:storage="

USERS_OLD = (
    f"alice@example.com:{ALICE_OLD}::::::{QUOTA}1073741824B\n"
    f"bob@example.com:{BOB}:5000:5000::/var/vmail/bob::{QUOTA}536870912B\n"
    f"dave@example.com:{BOB}::::::\n"
).encode()
USERS_NEW = (
    f"alice@example.com:{ALICE_NEW}::::::{QUOTA}1073741824B\n"
    f"bob@example.com:{BOB}:5000:5000::/var/vmail/bob::{QUOTA}2147483648B\n"
    f"carol@example.com:{CAROL}::::::\n"
).encode()
PATH = "/etc/dovecot/users"
DOVECOT = Activation("dovecot", "dovecot", "reload")


def windows(text: str, size: int = 8) -> set[str]:
    """Every `size`-character piece of a hash after its `{SCHEME}` prefix."""
    body = text.split("}", 1)[1]
    return {body[i : i + size] for i in range(len(body) - size + 1)}


def assert_no_hash(text: str) -> None:
    for value in HASHES:
        leaked = [w for w in windows(value) if w in text]
        assert not leaked, leaked


def users_file(content: bytes, *, mask: bool = True) -> RenderedFile:
    kind = "passwd-file" if mask else None
    return RenderedFile(PATH, content, 0o640, "root", "dovecot", "dovecot", True, kind)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan_from(before: bytes | None, after: RenderedFile | None, *, recorded: bool = True) -> Plan:
    """The plan from a host whose current release installed `before` (with its masked view
    recorded unless not `recorded`) to `after` (None: no longer wanted)."""
    files, managed = {}, {}
    if before is not None:
        files[PATH] = ObservedFile(sha(before), 0o640, "root", "dovecot")
        shown = mask_content("passwd-file", before) if recorded else None
        managed[PATH] = ManagedFile(sha(before), 0o640, "root", "dovecot", "dovecot", True, shown)
    tree = FileTree({PATH: after} if after else {})
    return make_plan("mx1", tree, HostState("r1", files, {}, managed), (DOVECOT,))


def test_the_view_keeps_every_field_but_the_hash() -> None:
    view = mask_passwd_file(USERS_OLD.decode())
    assert view.secret == "password"
    assert [line.text for line in view.lines] == [
        f"alice@example.com:{{BLF-CRYPT}}********::::::{QUOTA}1073741824B",
        f"bob@example.com:{{SHA512-CRYPT}}********:5000:5000::/var/vmail/bob::{QUOTA}536870912B",
        "dave@example.com:{SHA512-CRYPT}********::::::",
    ]
    assert [line.key for line in view.lines] == [
        "alice@example.com",
        "bob@example.com",
        "dave@example.com",
    ]
    # The same hash, the same fingerprint; another hash, another one; neither holds the hash.
    assert view.lines[1].fingerprint == view.lines[2].fingerprint != view.lines[0].fingerprint
    assert_no_hash(view.to_text())
    assert parse_view(view.to_text()) == view


def test_a_view_that_is_not_one_is_none() -> None:
    for text in (None, "", "not json", '{"secret": "x"}', '{"secret": "x", "lines": [[1, 2]]}'):
        assert parse_view(text) is None


def test_update_shows_accounts_and_quotas_and_says_which_password_changed() -> None:
    plan = plan_from(USERS_OLD, users_file(USERS_NEW))
    text = format_plan(plan, "diff")
    assert f"--- update {PATH} (dovecot; sensitive: passwords masked)\n" in text
    assert f"--- a{PATH} (masked)\n+++ b{PATH} (masked)\n" in text
    assert (
        f"-bob@example.com:{{SHA512-CRYPT}}********:5000:5000::/var/vmail/bob::{QUOTA}536870912B\n"
        in text
    )
    assert (
        f"+bob@example.com:{{SHA512-CRYPT}}********:5000:5000::/var/vmail/bob::{QUOTA}2147483648B\n"
        in text
    )
    assert "+carol@example.com:{PLAIN-MD5}********::::::\n" in text
    assert "-dave@example.com:{SHA512-CRYPT}********::::::\n" in text
    # alice's line reads the same masked: only the marker says her password changed.
    assert f" alice@example.com:{{BLF-CRYPT}}********::::::{QUOTA}1073741824B\n" in text
    assert text.endswith("~ alice@example.com: password changed\n")
    assert "bob@example.com: password changed" not in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_piece_of_any_hash_in_any_format(fmt: str) -> None:
    for plan in (
        plan_from(USERS_OLD, users_file(USERS_NEW)),
        plan_from(None, users_file(USERS_NEW)),
        plan_from(USERS_OLD, None),
        plan_from(USERS_OLD, users_file(USERS_NEW), recorded=False),
    ):
        text = format_plan(plan, fmt)  # type: ignore[arg-type]
        assert_no_hash(text)
        # No fingerprint either: of an unsalted hash it would let a reader test guesses.
        for view in (plan.changes[0].shown_before, plan.changes[0].shown_after):
            parsed = parse_view(view)
            for line in parsed.lines if parsed else ():
                assert not line.fingerprint or line.fingerprint not in text


def test_the_plan_object_holds_no_hash() -> None:
    for plan in (plan_from(USERS_OLD, users_file(USERS_NEW)), plan_from(USERS_OLD, None)):
        change = plan.changes[0]
        assert change.before is None and change.after is None
        assert_no_hash(repr(plan))


def test_create_and_delete_show_every_masked_line() -> None:
    created = format_plan(plan_from(None, users_file(USERS_NEW)), "diff")
    assert f"--- /dev/null\n+++ b{PATH} (masked)\n@@ -0,0 +1,3 @@\n" in created
    assert "+carol@example.com:{PLAIN-MD5}********::::::\n" in created
    deleted = format_plan(plan_from(USERS_OLD, None), "diff")
    assert f"--- delete {PATH} (dovecot; sensitive: passwords masked)\n" in deleted
    assert "-dave@example.com:{SHA512-CRYPT}********::::::\n" in deleted


def test_a_release_without_a_recorded_view_shows_the_new_one_whole() -> None:
    text = format_plan(plan_from(USERS_OLD, users_file(USERS_NEW), recorded=False), "diff")
    assert "(previous masked view not available from the host)\n" in text
    assert "+carol@example.com:{PLAIN-MD5}********::::::\n" in text


def test_a_change_the_view_cannot_show_says_so() -> None:
    # A hand edit on the host that the recorded view of the release does not reflect.
    view = mask_content("passwd-file", USERS_NEW)
    change = FileChange(
        PATH,
        ChangeKind.UPDATE,
        None,
        None,
        "dovecot",
        True,
        True,
        shown_before=view,
        shown_after=view,
    )
    assert diff_change(change) == (
        "(changed on the host by hand: compared with what the last release installed)\n"
        "(sensitive content changed; its masked view shows no difference)\n"
    )


def test_a_sensitive_file_without_a_mask_stays_hidden() -> None:
    key = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
    tree = FileTree(
        {"/etc/ssl/k": RenderedFile("/etc/ssl/k", key, 0o600, role="x", sensitive=True)}
    )
    plan = make_plan("mx1", tree, HostState(None), ())
    for fmt in FORMATS:
        text = format_plan(plan, fmt)
        assert "MIIEvQ" not in text and "PRIVATE" not in text
    assert "(sensitive: content hidden)" in format_plan(plan, "diff")
    assert "sensitive: content hidden" in format_plan(plan, "diff")


def test_the_dovecot_role_masks_its_passwd_file_only() -> None:
    role = load_role(Path(__file__).resolve().parents[2] / "roles" / "dovecot")
    masks = {f.template: f.mask for f in role.files}
    assert masks["passwd.j2"] == "passwd-file"
    assert [t for t, m in masks.items() if m] == ["passwd.j2"]  # deny files: not secret


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("{template: a.j2, path: /a, mask: passwd-file}", "mask 'passwd-file'"),
        ("{template: a.j2, path: /a, sensitive: true, mask: pem}", "mask 'pem'"),
    ],
)
def test_a_mask_is_known_and_for_a_sensitive_file(tmp_path: Path, entry: str, problem: str) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "role.yml").write_text(f"files:\n  - {entry}\n")
    with pytest.raises(RoleError, match=problem):
        load_role(tmp_path)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalTransport:
    # The host's own python3 runs the on-host program, as on a real host.
    monkeypatch.setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return LocalTransport("mx1", tmp_path / "root")


def test_the_view_travels_with_the_release(host: LocalTransport) -> None:
    """Apply records the view on the host; the next observe returns it only while the file
    differs from the desired one, so the plan diffs the two views."""
    first = FileTree({PATH: users_file(USERS_OLD)})
    plan = make_plan("mx1", first, observe_host(host, first), (DOVECOT,))
    apply_plan(plan, first, host, release_id=make_release_id(datetime.now(UTC), first.digest))
    assert observe_host(host, first).managed[PATH].shown is None  # in place: not sent
    second = FileTree({PATH: users_file(USERS_NEW)})
    state = observe_host(host, second)
    assert state.managed[PATH].shown == mask_content("passwd-file", USERS_OLD)
    assert PATH not in state.previous  # never the content
    text = format_plan(make_plan("mx1", second, state, (DOVECOT,)), "diff")
    assert "~ alice@example.com: password changed\n" in text
    assert "+carol@example.com:{PLAIN-MD5}********::::::\n" in text
    assert_no_hash(text)
