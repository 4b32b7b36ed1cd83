"""`render --out DIR` and the local transport write, read and delete only below their root.

Real files in a temp directory, with a sentinel directory next to the root standing for
"elsewhere" (`/etc` of the machine): every test checks it is left exactly as it was.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.connectors.confine import (
    ConfinedDir,
    ConfinementError,
    local_root_problem,
    plain_name,
    split_below,
)
from compiler.connectors.local import LocalTransport
from compiler.connectors.transport import TransportError
from compiler.push.connect import open_transport
from compiler.render.outdir import manifest_path, write_tree
from compiler.render.roles import default_roles_dir
from compiler.render.targets import PathError, check_tree_paths
from compiler.types import FileTree, RenderedFile
from schemas.inventory import HostSpec

HASH = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"


def _file(content: bytes = b"x\n") -> RenderedFile:
    return RenderedFile(path="", content=content, mode=0o644)


def _snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry below `directory`: file bytes, link targets, "dir"."""
    out: dict[str, bytes | str] = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A directory outside every root, with a file an escape would overwrite or delete."""
    where = tmp_path / "elsewhere"
    (where / "etc").mkdir(parents=True)
    (where / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    (where / "x").write_bytes(b"keep me\n")
    return where


# --- paths below a root -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["..", "../x", "/etc/postfix/../../../../tmp/x", "/a//b", "/a/./b", "a/..", "", "/", "a\0b"],
)
def test_paths_that_could_leave_the_root_are_refused(path: str) -> None:
    with pytest.raises(ConfinementError):
        split_below(path)


@pytest.mark.parametrize("name", ["..", ".", "../escape", "a/b", "/mx1", "", "mx1/"])
def test_a_host_directory_is_one_plain_name(name: str) -> None:
    with pytest.raises(ConfinementError):
        plain_name(name)
    assert plain_name("mx1.example.com") == "mx1.example.com"


# --- render --out -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["..", "../escape", ".", "a/b"])
def test_a_traversal_host_key_writes_nothing(tmp_path: Path, elsewhere: Path, host: str) -> None:
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    with pytest.raises(ConfinementError):
        write_tree(FileTree({"/x": _file(b"owned\n")}), out, name=host)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "path", ["/etc/postfix/../../../../tmp/x", "/../x", "/etc//x", "/etc/./x", "/a/.."]
)
def test_a_dotted_rendered_path_injected_past_the_schema_writes_nothing(
    tmp_path: Path, elsewhere: Path, path: str
) -> None:
    out = tmp_path / "out" / "mx1"
    out.mkdir(parents=True)
    (out / "old").write_bytes(b"old\n")
    before = _snapshot(tmp_path)
    tree = FileTree({"/etc/ok": _file(), path: _file(b"owned\n")})
    with pytest.raises(ConfinementError):
        write_tree(tree, tmp_path / "out", name="mx1")
    assert _snapshot(tmp_path) == before  # not even the good file, nor a deletion
    with pytest.raises(PathError):
        check_tree_paths(tree)  # and compile refuses the tree before any writer sees it


def test_a_file_where_a_directory_is_needed_is_refused_before_writing() -> None:
    tree = FileTree({"/etc/postfix/main.cf": _file(), "/etc/postfix/main.cf/dovecot.conf": _file()})
    with pytest.raises(PathError, match="needs it to be a directory"):
        check_tree_paths(tree)
    check_tree_paths(FileTree({"/etc/postfix/main.cf": _file(), "/etc/postfix/m": _file()}))


def test_a_host_directory_that_is_a_link_elsewhere_is_refused(
    tmp_path: Path, elsewhere: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mx1").symlink_to(elsewhere)
    before = _snapshot(elsewhere)
    with pytest.raises(ConfinementError, match="symbolic link"):
        write_tree(FileTree({"/etc/passwd": _file(b"owned\n")}), out, name="mx1")
    assert _snapshot(elsewhere) == before  # nothing written there, "x" not removed as stale


def test_a_link_deeper_inside_the_output_is_refused(tmp_path: Path, elsewhere: Path) -> None:
    out = tmp_path / "out"
    (out / "mx1").mkdir(parents=True)
    (out / "mx1" / "etc").symlink_to(elsewhere / "etc")
    before = _snapshot(elsewhere)
    with pytest.raises(ConfinementError, match="symbolic link"):
        write_tree(FileTree({"/etc/passwd": _file(b"owned\n")}), out, name="mx1")
    assert _snapshot(elsewhere) == before


def test_an_output_directory_that_is_a_link_is_refused(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "out").symlink_to(elsewhere)
    before = _snapshot(elsewhere)
    with pytest.raises(ConfinementError):
        write_tree(FileTree({"/etc/passwd": _file(b"owned\n")}), tmp_path / "out", name="etc")
    assert _snapshot(elsewhere) == before


def test_stale_links_are_removed_as_links_never_followed(tmp_path: Path, elsewhere: Path) -> None:
    out = tmp_path / "out"
    (out / "mx1").mkdir(parents=True)
    (out / "mx1" / "to-dir").symlink_to(elsewhere)
    (out / "mx1" / "to-file").symlink_to(elsewhere / "x")
    (out / "mx1" / "a").symlink_to(elsewhere / "etc" / "passwd")  # where a tree file goes
    before = _snapshot(elsewhere)
    assert write_tree(FileTree({"/a": _file(b"new\n")}), out, name="mx1") == 1
    assert _snapshot(elsewhere) == before
    assert sorted(os.listdir(out / "mx1")) == ["a"]
    assert not (out / "mx1" / "a").is_symlink() and (out / "mx1" / "a").read_bytes() == b"new\n"


def test_a_tampered_manifest_deletes_and_writes_nothing_outside(
    tmp_path: Path, elsewhere: Path
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    manifest = manifest_path(cache, out / "mx1")
    tree = FileTree({"/etc/a": _file(b"a\n")})
    write_tree(tree, out, manifest, name="mx1")
    write_tree(tree, out, manifest, name="mx1")
    doc = json.loads(manifest.read_bytes())
    victim = str(elsewhere / "x")
    st = os.lstat(victim)
    record = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode, "0" * 64]
    for key in ("../../elsewhere/x", "../../../../../etc/x", victim, "/etc/passwd"):
        doc["files"][key] = record
    manifest.write_text(json.dumps(doc))
    before = _snapshot(elsewhere)
    write_tree(FileTree({"/etc/b": _file(b"b\n")}), out, manifest, name="mx1")
    assert _snapshot(elsewhere) == before
    assert _snapshot(out / "mx1") == {"etc": "dir", "etc/b": b"b\n"}


# --- all or nothing: the command line -----------------------------------------------------------


def _inventory(tmp_path: Path, hosts: str) -> Path:
    inv = tmp_path / "inv"
    (inv / "domains").mkdir(parents=True)
    (inv / "mailcfg.yml").write_text(
        "schema_version: 1\nhosts:\n" + hosts + "policy:\n  postmaster: postmaster@example.com\n"
    )
    (inv / "domains" / "example.com.yml").write_text(
        f'domain: example.com\naccounts:\n  - name: postmaster\n    password: "{HASH}"\n'
    )
    return inv


def _run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


def _host(name: str, extra: str = "") -> str:
    return f"  {name}:\n    address: 192.0.2.1\n    hostname: mx.example.com\n{extra}"


def test_render_writes_no_host_when_one_fails(tmp_path: Path) -> None:
    inv = _inventory(
        tmp_path, _host("good", "    roles: [agent]\n") + _host("bad", "    roles: [postfix]\n")
    )
    roles = tmp_path / "roles"
    # A roles directory whose postfix role renders a path with "..": the second line of
    # defence (the compile check) fails that host; the good host must not be written either.
    shutil.copytree(default_roles_dir(), roles)
    spec = roles / "postfix" / "role.yml"
    spec.write_text(
        spec.read_text().replace(
            '"{{ paths.postfix_config_dir }}/master.cf"',
            '"{{ paths.postfix_config_dir }}/../../../master.cf"',
        )
    )
    out = tmp_path / "out"
    cache = str(tmp_path / "cache")
    code, text = _run(
        "render", str(inv), "--out", str(out), "--roles", str(roles), "--cache", cache
    )
    assert code == 1 and "nothing written" in text and "'..'" in text
    assert not out.exists()
    code, text = _run("validate", str(inv), "--roles", str(roles), "--cache", cache)
    assert code == 1 and "bad: error: render: rendered path" in text and "good: error" not in text
    code, text = _run("render", str(inv), "--out", str(out), "--host", "good", "--cache", cache)
    assert code == 0 and (out / "good").is_dir() and not (out / "bad").exists()


@pytest.mark.parametrize("key", ["..", "../escape", ".hidden", "a/b"])
def test_a_traversal_host_key_is_refused_at_load_with_its_place(tmp_path: Path, key: str) -> None:
    inv = _inventory(tmp_path, _host(f'"{key}"'))
    out = tmp_path / "out"
    code, text = _run("render", str(inv), "--out", str(out), "--cache", str(tmp_path / "c"))
    assert code == 1 and "mailcfg.yml:3:3: error: hosts" in text and repr(key) in text
    assert not out.exists() and not (tmp_path / "escape").exists()


# --- local roots --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root", ["/", "//", "///", "/./", "/etc", "/etc/", "/usr/", "/usr/lib", "/lib64", "/tmp"]
)
def test_a_system_directory_is_no_local_root(root: str) -> None:
    assert local_root_problem(root) is not None
    with pytest.raises(TransportError, match="local root"):
        LocalTransport("mx1", Path(root))


@pytest.mark.parametrize("root", ["..", ".", "../x", "a/../../x"])
def test_a_relative_root_stays_below_the_current_directory(root: str) -> None:
    assert local_root_problem(root) is not None


@pytest.mark.parametrize("root", ["/tmp/x", "/srv/mailcfg-demo", "hosts/mx1", ".mailcfg/hosts/mx"])
def test_own_directories_are_local_roots(root: str) -> None:
    assert local_root_problem(root) is None


def test_a_root_that_is_a_link_to_a_system_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").symlink_to("/etc")
    with pytest.raises(TransportError, match="system directory"):
        LocalTransport("mx1", tmp_path / "root")


def test_a_relative_root_through_a_link_is_refused(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "hosts").symlink_to(elsewhere)
    spec = HostSpec(address="x", hostname="mx1.example.com", transport="local", root="hosts/mx1")
    with pytest.raises(TransportError, match="symbolic link"):
        open_transport("mx1", spec, base_dir=tmp_path)
    assert not (elsewhere / "mx1").exists()


def test_local_transport_put_and_get_stay_below_the_root(tmp_path: Path, elsewhere: Path) -> None:
    root = tmp_path / "root"
    t = LocalTransport("mx1", root)
    before = _snapshot(elsewhere)
    for path in ("/../elsewhere/x", "/etc/postfix/../../../elsewhere/x", "//x", "/./x"):
        with pytest.raises(ConfinementError):
            t.put(path, b"owned\n")
        with pytest.raises(ConfinementError):
            t.get(path)
    (root / "etc").symlink_to(elsewhere / "etc")
    with pytest.raises(ConfinementError, match="symbolic link"):
        t.put("/etc/passwd", b"owned\n")
    with pytest.raises(ConfinementError, match="symbolic link"):
        t.get("/etc/passwd")
    (root / "var").symlink_to(elsewhere)
    with pytest.raises(ConfinementError):
        t.put("/var/lib/mailcfg/onhost.py", b"owned\n")
    assert _snapshot(elsewhere) == before
    t.put("/srv/a", b"mine\n", 0o600)
    assert t.get("/srv/a") == b"mine\n" and (root / "srv/a").stat().st_mode & 0o777 == 0o600


def test_a_planted_onhost_script_is_replaced_before_it_runs(tmp_path: Path) -> None:
    from compiler.push.hostcall import call_onhost, onhost_script
    from compiler.push.hostside.wire import ReleasesReply

    script, content = onhost_script()
    root = tmp_path / "hosts" / "mx1"
    planted = root / script.lstrip("/")
    planted.parent.mkdir(parents=True)
    planted.write_text(
        "import json, pathlib; pathlib.Path('PWNED').touch(); print(json.dumps({'ok': True}))"
    )
    spec = HostSpec(address="x", hostname="mx1.example.com", transport="local", root="hosts/mx1")
    t = open_transport("mx1", spec, base_dir=tmp_path)
    answer = call_onhost(t, "releases", {}, ReleasesReply)
    assert answer["releases"] == []
    assert planted.read_bytes() == content and not (root / "PWNED").exists()


def test_onhost_script_refuses_links_in_a_directory_root(tmp_path: Path, elsewhere: Path) -> None:
    from compiler.push.hostcall import HostError, call_onhost
    from compiler.push.hostside.wire import ObserveReply, ReleasesReply

    root = tmp_path / "root"
    (root / "var" / "lib" / "mailcfg").mkdir(parents=True)
    (root / "var" / "lib" / "mailcfg" / "releases").symlink_to(elsewhere)
    before = _snapshot(elsewhere)
    t = LocalTransport("mx1", root)
    with pytest.raises(HostError, match="symbolic link"):
        call_onhost(t, "releases", {}, ReleasesReply)
    (root / "var" / "lib" / "mailcfg" / "releases").unlink()
    (root / "etc").symlink_to(elsewhere / "etc")
    request = {"paths": {"/etc/passwd": ["00", "root", "root"]}, "sensitive": [], "needs": None}
    with pytest.raises(HostError, match="symbolic link") as refused:
        call_onhost(t, "observe", request, ObserveReply)
    assert "root:x" not in str(refused.value)
    assert _snapshot(elsewhere) == before


def test_confined_dir_reads_no_link(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "x").symlink_to(elsewhere / "x")
    with ConfinedDir(tmp_path / "root", create=False) as root, pytest.raises(ConfinementError):
        root.read(("x",))
