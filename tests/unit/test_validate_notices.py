"""A machine without Postfix or Dovecot applies the example inventory to its local roots with one
plain notice per validation tool it lacks, never a raw shell one-liner; a user who may not run
`postfix check` or read the TLS key gets a notice for that, and a real mistake still fails.

"Without Postfix/Dovecot" is a PATH holding every program of this machine but theirs (the e2e
fresh-root test does the same on a Debian root where they were never installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, make_activations, role_defaults
from compiler.types import Activation
from schemas.domain import Account, Domain
from schemas.inventory import HostSpec, Inventory

REPO = Path(__file__).resolve().parents[2]
MAILCFG = Path(sys.executable).parent / "mailcfg"
HASH = "{BLF-CRYPT}$2y$05$.VsmJkzjS6LUHAjMBEIzeuykaQpyiB5/GmNrZl8XRM4e32YbBdVPS"
# Programs of the postfix, dovecot and sieve packages.
MAIL_PREFIXES = ("post", "dove", "sieve", "dsync", "sendmail", "mailq", "newaliases")
POSTCONF_MISSING = "postconf not installed: Postfix syntax not checked; apt install postfix"
DOVECONF_MISSING = "doveconf not installed: Dovecot syntax not checked; apt install dovecot-core"
POSTFIX_CHECK_NOT_ROOT = "postfix check needs root: Postfix directory permissions not checked"
DOVECONF_NOT_ROOT = (
    "doveconf -x needs root to read the TLS key: Dovecot certificate and key not checked"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switches to user nobody")


@pytest.fixture(scope="module")
def path_without_mail_tools(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH of links to every program on this machine's PATH except Postfix's and Dovecot's."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bin_dir / entry.name
            if entry.name.startswith(MAIL_PREFIXES) or link.exists() or link.is_symlink():
                continue
            if os.access(entry.path, os.X_OK) and not entry.is_dir():
                link.symlink_to(entry.path)
    assert shutil.which("postconf", path=str(bin_dir)) is None
    assert shutil.which("sh", path=str(bin_dir)) is not None
    return str(bin_dir)


def test_example_applies_without_postfix_and_dovecot(
    tmp_path: Path, path_without_mail_tools: str
) -> None:
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO / "inventory", inventory)
    env = {**os.environ, "PATH": path_without_mail_tools}
    proc = subprocess.run(
        [str(MAILCFG), "apply", "--yes", str(inventory)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    warnings = [line.strip() for line in out.splitlines() if line.strip().startswith("warning:")]
    # One line per host and missing tool, naming the tool, what went unchecked and the package
    # (the rest: services are not reloaded on a local root).
    skipped = sorted(w for w in warnings if "not installed" in w)
    assert len(skipped) == 4, out
    assert [w.endswith(DOVECONF_MISSING) for w in skipped] == [True, True, False, False], out
    assert [w.endswith(POSTCONF_MISSING) for w in skipped] == [False, False, True, True], out
    assert "/bin/sh" not in out and "not found" not in out and "out=$(" not in out, out
    again = subprocess.run(
        [str(MAILCFG), "apply", "--yes", str(inventory)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr


# --- the commands themselves, as root and as a user ---------------------------------------------


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory user nobody may enter (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mailcfg-notices-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def make_key_pair(where: Path) -> tuple[Path, Path]:
    """A certificate anyone may read and a key only root may (as Debian's snakeoil pair)."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=mx.example.com",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True,
    )  # fmt: skip
    cert.chmod(0o644)
    key.chmod(0o600)
    return cert, key


def stage_activations(where: Path, **policy: object) -> tuple[Path, list[Activation]]:
    """The rendered tree of one host staged under `where/stage` (readable by anyone), and its
    role activations."""
    cert, key = make_key_pair(where)
    host_policy = {"tls": {"cert": str(cert), "key": str(key)}, **policy}
    domain = Domain(domain="example.com", accounts=[Account(name="a", password=HASH)])
    inv = Inventory(
        hosts={"mx": HostSpec(address="192.0.2.1", hostname="mx.example.com", policy=host_policy)},
        domains={"example.com": domain},
    )
    roles = load_roles(default_roles_dir())
    cfg = resolve_host(inv, "mx", role_defaults(roles))
    tree = render_host(cfg, roles)
    stage = where / "stage"
    for path in tree:
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tree[path].content)
    for dirpath, _, filenames in os.walk(stage):
        os.chmod(dirpath, 0o777)  # postmap, run as the user, writes the .db files here
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return stage, make_activations(cfg, roles, {f.role for f in tree.values()})


def run_role_commands(
    stage: Path, act: Activation, as_nobody: bool, path: str | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Each build and validate command of `act` as the on-host script runs it (`/bin/sh -c`),
    as root or as user nobody."""
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if as_nobody else []
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    results = []
    for command in (*act.build, *act.validate):
        argv = [*prefix, "/bin/sh", "-c", command.replace("{stage}", str(stage))]
        results.append(
            subprocess.run(argv, cwd=stage, env=env, capture_output=True, text=True, check=False)
        )
    return results


def by_role(acts: list[Activation], role: str) -> Activation:
    return next(a for a in acts if a.role == role)


def test_missing_tool_is_one_notice_and_exit_127(
    world_dir: Path, path_without_mail_tools: str
) -> None:
    """Exit 127 is what the on-host script turns into a notice on a local root (and a failure
    on "/"); the notice is the command's only output. The other Postfix commands leave the
    report to postconf's (exit 0), so it comes once."""
    stage, acts = stage_activations(world_dir)
    postfix = run_role_commands(stage, by_role(acts, "postfix"), False, path_without_mail_tools)
    failed = [r for r in postfix if r.returncode != 0]
    assert [(r.returncode, r.stderr) for r in failed] == [(127, POSTCONF_MISSING + "\n")]
    dovecot = run_role_commands(stage, by_role(acts, "dovecot"), False, path_without_mail_tools)
    assert [(r.returncode, r.stderr) for r in dovecot if r.returncode != 0] == [
        (127, DOVECONF_MISSING + "\n")
    ]


@needs_root
def test_a_user_gets_a_notice_for_what_only_root_may_check(world_dir: Path) -> None:
    stage, acts = stage_activations(world_dir)
    postfix = run_role_commands(stage, by_role(acts, "postfix"), True)
    assert [(r.returncode, r.stderr) for r in postfix if r.returncode != 0] == [
        (127, POSTFIX_CHECK_NOT_ROOT + "\n")
    ]
    dovecot = run_role_commands(stage, by_role(acts, "dovecot"), True)
    assert [(r.returncode, r.stderr) for r in dovecot if r.returncode != 0] == [
        (127, DOVECONF_NOT_ROOT + "\n")
    ]
    # As root, every check runs and passes.
    for role in ("postfix", "dovecot"):
        assert [r.stderr for r in run_role_commands(stage, by_role(acts, role), False) if
                r.returncode != 0] == []  # fmt: skip


@needs_root
@pytest.mark.parametrize("as_nobody", [False, True], ids=["root", "user"])
def test_a_real_mistake_still_fails(world_dir: Path, as_nobody: bool) -> None:
    stage, acts = stage_activations(world_dir, postfix_main={"line_length_limit": "lots"})
    results = run_role_commands(stage, by_role(acts, "postfix"), as_nobody)
    failed = next(r for r in results if r.returncode != 0)
    assert failed.returncode not in (0, 127)
    assert "bad numerical configuration: line_length_limit = lots" in failed.stderr
    # A broken dovecot.conf fails for a user too (the syntax is checked without the key).
    conf = stage / "etc/dovecot/dovecot.conf"
    conf.write_text(conf.read_text() + "no_such_setting = 1\n")
    dovecot = run_role_commands(stage, by_role(acts, "dovecot"), as_nobody)
    failed = next(r for r in dovecot if r.returncode != 0)
    assert failed.returncode not in (0, 127)
    assert "no_such_setting" in failed.stderr
