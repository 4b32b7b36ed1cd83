"""The README's two commands, word for word, on a fresh minimal Debian 12 (issue 11).

mmdebstrap makes the root (variant minbase, as container images ship: no python3, no sudo, no
mail packages, empty apt lists) and a clean checkout of HEAD (`git archive`) goes into it. Every
command runs there in a chroot inside private mount and PID namespaces, so what a command
mounts (/proc, /dev) or starts is gone when it exits; package scripts are kept from starting
daemons by a `policy-rc.d`, as in container images.

As root without sudo, and as a user with sudo: the main job installs what it needs, applies the
example inventory with one notice per validation tool that is missing, and says "no changes"
when repeated. Then the test command's set-up (`--setup-only`: its packages and its own
virtualenv, without running this suite again inside the root) leaves the main job's `.venv`
untouched, and the main job still works, also when it applies anew with Postfix and Dovecot
now installed.

The minbase tarball is cached under /var/cache/mailcfg-tests/ for a week (the root's own
`apt-get update` fetches current package lists anyway); from an empty cache it takes ~30 s.
Each test takes 2-3 minutes, most of it apt and pip downloading (Debian's archive, PyPI).
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from barehost import debian_tarball

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_TIMEOUT = 1200.0
USER = "alice"
# What the main job prints on a machine without Postfix/Dovecot, and as a user who may not run
# `postfix check` or read the TLS key.
NOT_INSTALLED = (
    "postconf not installed: Postfix syntax not checked; apt install postfix",
    "doveconf not installed: Dovecot syntax not checked; apt install dovecot-core",
)
NOT_ROOT = (
    "postfix check needs root: Postfix directory permissions not checked",
    "doveconf -x needs root to read the TLS key: Dovecot certificate and key not checked",
)


def read_readme_command(heading: str) -> str:
    """The indented command line that follows `heading` in HEAD's README (the one copied)."""
    readme = subprocess.run(
        ["git", "-C", str(REPO), "show", "HEAD:README.md"], capture_output=True, check=True
    )
    lines = readme.stdout.decode().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    return next(line.strip() for line in lines[start + 1 :] if line.startswith("    "))


MAIN_JOB = read_readme_command("**Run the main job**")
TEST_COMMAND = read_readme_command("**Run the tests**")


@pytest.fixture(scope="module")
def minbase_tarball() -> Path:
    """Debian 12 minbase as a tarball, made anew when missing or older than a week."""
    return debian_tarball("minbase")


@dataclass(frozen=True)
class FreshRoot:
    path: Path

    def run(self, script: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        """`bash -c script` in the chroot as `user` (HOME set, a clean environment); stdout and
        stderr together. Private mount and PID namespaces: when bash exits, every process it
        left is killed and /proc and /dev are unmounted with the namespace."""
        clean = ["/usr/bin/env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "TERM=dumb"]
        if user == "root":
            inner = [*clean, "HOME=/root", "/bin/bash", "-c", script]
        else:
            inner = [*clean, "/usr/sbin/runuser", "-u", user, "--", "/bin/bash", "-c", script]
        argv = [
            "unshare", "--mount", "--pid", "--fork", "--kill-child",
            f"--mount-proc={self.path}/proc",
            "/bin/sh", "-c", 'mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"',
            str(self.path), *inner,
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            if proc.poll() is None:  # timed out: its session, by the id we started it with
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return subprocess.CompletedProcess(argv, proc.returncode, out, "")

    def checked(self, script: str, user: str = "root") -> str:
        result = self.run(script, user)
        assert result.returncode == 0, f"{script}: exit {result.returncode}\n{result.stdout}"
        return result.stdout


def site_pip_ca() -> Path | None:
    """The CA bundle this machine's pip is told to trust (a TLS-inspecting proxy's), if any."""
    parser = configparser.ConfigParser()
    parser.read(["/etc/pip.conf", "/etc/xdg/pip/pip.conf"])
    named = os.environ.get("PIP_CERT") or parser.get("global", "cert", fallback="")
    return Path(named) if named and Path(named).is_file() else None


def mounts_below(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        return [m for line in f if (m := line.split()[4]).startswith(prefix) or m == str(path)]


def copy_checkout(dest: Path) -> None:
    """A clean checkout of HEAD (what CI tests): no .venv, no caches, no work in progress."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


@pytest.fixture
def fresh_root(tmp_path: Path, minbase_tarball: Path) -> Iterator[FreshRoot]:
    path = tmp_path / "root"
    path.mkdir()
    subprocess.run(
        ["tar", "-x", "--numeric-owner", "-f", str(minbase_tarball), "-C", str(path)], check=True
    )
    # The site's network settings, as its own machines would have them: name servers and the
    # CA that pip must trust to reach PyPI here.
    shutil.copy(Path("/etc/resolv.conf").resolve(), path / "etc/resolv.conf")
    ca = site_pip_ca()
    if ca is not None:
        shutil.copy(ca, path / "etc/pip-site-ca.pem")
        (path / "etc/pip.conf").write_text("[global]\ncert = /etc/pip-site-ca.pem\n")
    policy = path / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# No daemon starts in this test root.\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield FreshRoot(path)
    finally:
        # The mounts lived in the commands' own namespaces; never delete through one that is
        # still visible here (/dev would go with it).
        assert mounts_below(path) == []
        shutil.rmtree(path)


def snapshot(tree: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path below `tree` with its mode, owner, size and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), tree)
            found[rel] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    return found


def written_main_cf(checkout: Path) -> list[Path]:
    """mx1's main.cf wherever the example's local root puts it (below the checkout)."""
    tail = ".mailcfg/hosts/mx1/etc/postfix/main.cf"
    return [p for p in checkout.rglob("main.cf") if p.as_posix().endswith(tail)]


def assert_applied(output: str, notices: tuple[str, ...]) -> None:
    for notice in notices:
        assert output.count(notice) == 2, output  # once per host (mx1, mx2)
    # No raw shell one-liner or shell error instead of a notice.
    assert "/bin/sh" not in output and "not found" not in output, output


def remove_local_roots(root: FreshRoot, checkout: str, user: str = "root") -> None:
    """Forget what the main job applied, so that it applies (and validates) anew."""
    root.checked(
        f"cd {checkout} && find . -path ./.venv -prune -o -path ./.venv-test -prune -o"
        " -name .mailcfg -type d -prune -exec rm -r {} +",
        user,
    )


def test_readme_commands_as_root_without_sudo(fresh_root: FreshRoot) -> None:
    root, home = fresh_root, fresh_root.path / "root/mailcfg"
    assert not (root.path / "usr/bin/sudo").exists()
    assert not (root.path / "usr/bin/python3").exists()
    copy_checkout(home)
    cd = "cd /root/mailcfg && "

    first = root.checked(cd + MAIN_JOB)
    assert_applied(first, NOT_INSTALLED)
    assert written_main_cf(home)
    assert "no changes" in root.checked(cd + MAIN_JOB)

    venv = snapshot(home / ".venv")
    root.checked(f"{cd}{TEST_COMMAND} --setup-only")
    assert (home / ".venv-test/bin/pytest").is_file()
    assert snapshot(home / ".venv") == venv
    assert "no changes" in root.checked(cd + MAIN_JOB)

    # Now with Postfix and Dovecot installed (by the test set-up), as root: all checks run.
    remove_local_roots(root, "/root/mailcfg")
    again = root.checked(cd + MAIN_JOB)
    assert_applied(again, ())
    assert not [n for n in NOT_INSTALLED + NOT_ROOT if n in again], again


def test_readme_commands_as_a_user_with_sudo(fresh_root: FreshRoot) -> None:
    root, home = fresh_root, fresh_root.path / f"home/{USER}/mailcfg"
    # An image with sudo and a user allowed to use it, its package lists emptied again.
    root.checked(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo"
        f" >/dev/null && rm -rf /var/lib/apt/lists/* && useradd -m -s /bin/bash {USER}"
        f" && echo '{USER} ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/{USER}"
        f" && chmod 0440 /etc/sudoers.d/{USER}"
    )
    copy_checkout(home)
    root.checked(f"chown -R {USER}: /home/{USER}/mailcfg")
    uid = (root.path / f"home/{USER}").stat().st_uid
    cd = "cd ~/mailcfg && "

    first = root.checked(cd + MAIN_JOB, USER)
    assert_applied(first, NOT_INSTALLED)
    assert "no changes" in root.checked(cd + MAIN_JOB, USER)
    assert {owner for _, owner, _, _ in snapshot(home).values()} == {uid}

    venv = snapshot(home / ".venv")
    root.checked(f"{cd}{TEST_COMMAND} --setup-only", USER)
    assert snapshot(home / ".venv") == venv
    # Root's files in the checkout: the test virtualenv only (and what it holds).
    root_owned = {p.split("/")[0] for p, (_, owner, _, _) in snapshot(home).items() if owner == 0}
    assert root_owned == {".venv-test"}
    assert "no changes" in root.checked(cd + MAIN_JOB, USER)

    # Postfix and Dovecot are now installed: the user's apply checks what a user may.
    remove_local_roots(root, "~/mailcfg", USER)
    again = root.checked(cd + MAIN_JOB, USER)
    assert_applied(again, NOT_ROOT)
    assert not [n for n in NOT_INSTALLED if n in again], again
