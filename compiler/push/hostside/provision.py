"""Make the machine what the roles need (`wire.NeedsDoc`) before a release is staged: the
packages installed, the groups, users and directories made, the units enabled.

Each part is a named step (`packages`, `groups`, `users`, `directories`, `units`), so a
failure says which; each does only what is missing when it runs (the facts are read again:
the plan may be minutes old), so running it twice changes nothing the second time. Nothing
here is undone by a rollback: a package installed stays installed (the release's files are
what a rollback puts back).

Packages: `apt-get install` with no questions (`DEBIAN_FRONTEND=noninteractive`, the
package's own configuration files kept: `--force-confdef --force-confold`; no Recommends),
after the roles' debconf answers are set (Postfix's package then leaves `main.cf` to
mailcfg), and after `apt-get update` only when a missing package has no candidate in the
lists. Every command is an argv (no shell), and every name was checked (`machine.check_needs`).

On a directory root (tests; the controller sends no needs for a local host) only directories
are made, below the root: packages, users and units would act on this machine.
"""

from __future__ import annotations

import os
import subprocess

from .fileops import owner_ids
from .hostroot import Host, StepFailed
from .machine import check_needs, find_directory, find_group, find_user, installed_versions
from .machine import unit_state as read_unit_state
from .wire import NeedsDoc

APT_TIMEOUT = 1800.0  # a whole install (downloads included)
TOOL_TIMEOUT = 120.0
APT_OPTIONS = [
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    # Wait for an unattended upgrade holding dpkg's lock instead of failing at once.
    "-o",
    "DPkg::Lock::Timeout=300",
    # What the roles name and what it depends on, nothing merely recommended: rspamd's
    # package recommends redis-server, a daemon the host would then run unasked.
    "--no-install-recommends",
]
# No question, no pager, no "restart services?" dialog (Ubuntu's needrestart).
APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "APT_LISTCHANGES_FRONTEND": "none",
    "NEEDRESTART_MODE": "a",
    "NEEDRESTART_SUSPEND": "1",
}


def provision(host: Host, needs: NeedsDoc, warnings: list[str]) -> None:
    """Every step, in order (packages first: they make users and directories of their own)."""
    check_needs(needs)
    if not host.is_system:
        if needs["packages"] or needs["users"] or needs["groups"] or needs["units"]:
            warnings.append(
                "packages, users, groups and units skipped: a directory root is not a machine"
            )
        make_directories(host, needs)
        return
    install_packages(host, needs)
    make_groups(host, needs)
    make_users(host, needs)
    make_directories(host, needs)
    enable_units(host, needs)


def run_tool(step: str, argv: list[str], timeout: float, stdin: bytes = b"") -> str:
    """Run `argv` (with the apt environment); its stdout, or StepFailed(step, its output)."""
    env = dict(os.environ, **APT_ENV)
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(step, f"{' '.join(argv)}: timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise StepFailed(step, f"{argv[0]}: {exc}") from None
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).decode(errors="replace").strip()[-3000:]
        raise StepFailed(step, f"{' '.join(argv)}: exit {proc.returncode}: {output}")
    return proc.stdout.decode(errors="replace")


def install_packages(host: Host, needs: NeedsDoc) -> None:
    versions = installed_versions(host, needs["packages"])
    missing = [name for name in needs["packages"] if versions[name] is None]
    if not missing:
        return
    if needs["debconf"]:
        answers = "".join(line + "\n" for line in needs["debconf"]).encode()
        run_tool("packages", ["debconf-set-selections"], TOOL_TIMEOUT, answers)
    if not all_installable(missing):
        run_tool("packages", ["apt-get", "-q", "update"], APT_TIMEOUT)
    run_tool(
        "packages",
        ["apt-get", "-q", "-y", *APT_OPTIONS, "install", "--", *missing],
        APT_TIMEOUT,
    )
    versions = installed_versions(host, missing)
    still = [name for name in missing if versions[name] is None]
    if still:
        raise StepFailed("packages", f"not installed after apt-get install: {', '.join(still)}")


def all_installable(packages: list[str]) -> bool:
    """Whether the package lists have a candidate for each of `packages` (else they are
    stale or empty: a fresh host's, a new suite)."""
    out = run_tool("packages", ["apt-cache", "policy", "--", *packages], TOOL_TIMEOUT)
    candidates: dict[str, str] = {}
    name = ""
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
        elif line.strip().startswith("Candidate:") and name:
            candidates[name] = line.split(":", 1)[1].strip()
    return all(candidates.get(p, "(none)") != "(none)" for p in packages)


def make_groups(host: Host, needs: NeedsDoc) -> None:
    for group in needs["groups"]:
        found = find_group(host, group["name"])
        if found is None:
            gid = [] if group["gid"] is None else ["--gid", str(group["gid"])]
            run_tool("groups", ["groupadd", "--system", *gid, "--", group["name"]], TOOL_TIMEOUT)
        elif group["gid"] is not None and found != group["gid"]:
            raise StepFailed("groups", f"group {group['name']} has gid {found}, not {group['gid']}")


def make_users(host: Host, needs: NeedsDoc) -> None:
    for user in needs["users"]:
        found = find_user(host, user["name"])
        if found is None:
            uid = [] if user["uid"] is None else ["--uid", str(user["uid"])]
            argv = ["useradd", "--system", *uid, "--gid", user["group"], "--home-dir"]
            argv += [user["home"], "--no-create-home", "--shell", user["shell"], user["name"]]
            run_tool("users", argv, TOOL_TIMEOUT)
        elif user["uid"] is not None and found["uid"] != user["uid"]:
            raise StepFailed(
                "users", f"user {user['name']} has uid {found['uid']}, not {user['uid']}"
            )


def make_directories(host: Host, needs: NeedsDoc) -> None:
    for want in needs["directories"]:
        local = host.path(want["path"])
        found = find_directory(host, want["path"])
        if found is not None and not found["directory"]:
            raise StepFailed("directories", f"{want['path']} exists and is not a directory")
        try:
            if found is None:
                os.makedirs(os.path.dirname(local), mode=0o755, exist_ok=True)
                os.mkdir(local, want["mode"])
            if host.real_owners:
                os.chown(local, *owner_ids(want["owner"], want["group"]))
            os.chmod(local, want["mode"])  # mkdir's mode passed through the umask
        except OSError as exc:
            raise StepFailed("directories", f"{want['path']}: {exc}") from None
        except StepFailed as exc:  # an unknown owner or group
            raise StepFailed("directories", f"{want['path']}: {exc.message}") from None


def enable_units(host: Host, needs: NeedsDoc) -> None:
    if not os.path.isdir("/run/systemd/system"):
        return  # no systemd: the plan said so
    for unit in needs["units"]:
        if read_unit_state(unit)["enabled"] not in ("enabled", "static", "alias", "indirect"):
            run_tool("units", ["systemctl", "enable", "--quiet", "--", unit], TOOL_TIMEOUT)
