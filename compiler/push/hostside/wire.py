"""The JSON documents the controller and the on-host program exchange, declared once, and the
validator both sides run on a document when it arrives.

Requests go controller → host (in argv or a file; `release.json` inside an apply's bundle);
replies go host → controller (one document on stdout). Every field is always present (a value
that may be absent is `null`; the exceptions are a file's `derived` mark and `shown` view), and
a field not declared here is refused: both sides are the same version, since the controller
ships this program with itself.

`wirecheck.check_document(doc, Declared, "observe reply")` checks a document against its
declaration here.

This module is stdlib-only and runs on the host's own `python3` (3.9 or later). It therefore
does not use `from __future__ import annotations`, and writes `Optional[...]`: the validator
evaluates these annotations at run time, where `X | None` needs Python 3.10.
"""

# Optional[...]: see the docstring.
# ruff: noqa: UP045

import re
from typing import Any, Literal, Optional, TypedDict

# --- parts --------------------------------------------------------------------------------------


class ActivationDoc(TypedDict):
    """A role's commands (`compiler.types.Activation`); `{stage}` stands for the staged tree."""

    role: str
    service: str
    action: str
    build: list[str]
    validate: list[str]
    apply: list[str]
    verify: list[str]


class _DerivedMark(TypedDict, total=False):
    derived: bool  # a map the host built from a rendered file (`x.db` ← `x`)
    # A sensitive file's masked view (`compiler.render.masking`), recorded with the release so
    # a plan can diff it; absent where there is none, and in `observe` where the file on disk
    # is already the desired one.
    shown: str


class FileMeta(_DerivedMark):
    """A file of a release: what the controller rendered, or what the host built."""

    sha256: str
    mode: int
    owner: str
    group: str
    role: str
    sensitive: bool


class LiveFile(TypedDict):
    """A file as found on the host now (`sha256` is "not-a-regular-file" for anything else)."""

    sha256: str
    mode: int
    owner: str
    group: str
    size: int


class ReleaseEntry(TypedDict):
    """One stored release in a `releases` reply."""

    id: str
    tree_digest: str
    previous: Optional[str]
    installed_at: Optional[int]
    files: int
    current: bool


# What a name in a `NeedsDoc` may be (checked by the controller when roles render their needs,
# and by the host before a name reaches a command's argv): never an option, never two words.
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,100}")  # Debian policy 5.6.1
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
UNIT_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,200}\.(service|socket|timer|path|target)")


class GroupNeed(TypedDict):
    name: str
    gid: Optional[int]  # null: any (a new one is chosen by groupadd)


class UserNeed(TypedDict):
    name: str
    uid: Optional[int]  # null: any (a new system uid)
    group: str  # its primary group (declared in `groups`, or one a package makes)
    home: str
    shell: str


class DirectoryNeed(TypedDict):
    path: str
    owner: str
    group: str
    mode: int


# Where the agent's installs live on a host: one virtualenv per agent id, and `current`, a
# symlink to the live release's one, which the agent's unit runs through.
AGENT_HOME = "/opt/mailcfg/agent"
AGENT_ROLE = "agent"  # the role whose unit runs it: restarted when `current` moves
AGENT_ID = re.compile(r"[0-9][0-9A-Za-z.+]{0,40}-[0-9a-f]{12}")  # `compiler.push.agentdist`
WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,200}\.whl")


class AgentDoc(TypedDict):
    """The agent a release runs (`compiler.push.agentdist`): its id, its version, and the
    wheels the bundle carries under `agent/` (name → sha256; empty when the host has it)."""

    id: str
    version: str
    wheels: dict[str, str]


class AgentFacts(TypedDict):
    current: Optional[str]  # the id `current` points at (null: none)
    installed: list[str]  # the complete installs


class NeedsDoc(TypedDict):
    """What a host's roles need besides their files (`compiler.types.HostNeeds`): Debian
    packages (with the debconf answers set before they are installed), system groups and
    users, directories and systemd units to enable."""

    packages: list[str]
    debconf: list[str]  # `debconf-set-selections` lines: "<package> <question> <type> <value>"
    groups: list[GroupNeed]
    users: list[UserNeed]
    directories: list[DirectoryNeed]
    units: list[str]
    agent: bool  # a role runs mailcfg's agent: observe reports its installs


class OsRelease(TypedDict):
    id: str  # /etc/os-release ID ("debian", "ubuntu"; "" when absent)
    version_id: str  # VERSION_ID ("12", "24.04")
    pretty_name: str


class UserFact(TypedDict):
    uid: int
    gid: int


class DirectoryFact(TypedDict):
    directory: bool  # false: something else is at the path
    mode: int
    owner: str
    group: str


class UnitFact(TypedDict):
    enabled: str  # `systemctl is-enabled`: enabled, disabled, static, masked, not-found, …
    active: str  # `systemctl is-active`: active, inactive, failed, …


class SystemFacts(TypedDict):
    """The machine behind a host's "/" as the needs concern it: each need's name or path maps
    to what was found (null: absent; a package's installed version)."""

    os: OsRelease
    python: str  # the version of the python3 running this program ("3.11.2")
    machine: str  # `uname -m` ("x86_64", "aarch64")
    packages: dict[str, Optional[str]]
    groups: dict[str, Optional[int]]
    users: dict[str, Optional[UserFact]]
    directories: dict[str, Optional[DirectoryFact]]
    systemd: bool  # systemd runs (PID 1): the units were asked about
    units: dict[str, UnitFact]  # empty without systemd
    agent: Optional[AgentFacts]  # null when no role runs the agent, or on a directory root


# --- requests (controller → host) ---------------------------------------------------------------


class ObserveRequest(TypedDict):
    paths: dict[str, tuple[str, str, str]]  # path → [sha256 prefix, owner, group] wanted
    sensitive: list[str]  # paths whose content is never sent back
    needs: Optional[NeedsDoc]  # null: a local root, no machine facts wanted


class ApplyRequest(TypedDict):
    bundle: str  # host path of the uploaded bundle (a tar holding `release.json` + `tree/`)


class BundleDoc(TypedDict):
    """`release.json` in an apply's bundle."""

    id: str
    tree_digest: str
    expect_current: Optional[str]  # the release the plan was made against
    keep_releases: int
    files: dict[str, FileMeta]
    activations: list[ActivationDoc]  # the changed roles': run by this apply
    # Every role's, as rendered for this release: a later rollback to it runs these (its own
    # commands, not those of the inventory the rollback is made from).
    role_activations: list[ActivationDoc]
    needs: Optional[NeedsDoc]  # ensured before the release is staged; null: none (a local root)
    agent: Optional[AgentDoc]  # installed before staging, made current at install; null: none


class RollbackRequest(TypedDict):
    to: Optional[str]  # null: the release before the current one
    activations: list[ActivationDoc]  # every role's; those whose files differ run


class ReleasesRequest(TypedDict):
    pass


class RecoverRequest(TypedDict):
    pass  # run with no arguments (the boot hook): `{}`


# --- replies (host → controller) ----------------------------------------------------------------


class FailureReply(TypedDict):
    """Any command that failed. `rolled_back_to` and `rollback_errors` tell what a failure after
    install put back (null and [] when the live files were never touched)."""

    ok: Literal[False]
    step: str
    message: str
    warnings: list[str]
    rolled_back_to: Optional[str]
    rollback_errors: list[str]


class ObserveReply(TypedDict):
    ok: Literal[True]
    release_id: Optional[str]
    managed: dict[str, FileMeta]  # the current release's rendered files
    files: dict[str, LiveFile]
    previous: dict[str, str]  # path → base64 of the content found, for diffs
    interrupted: Optional[str]  # the release an interrupted apply was installing
    pending: list[ActivationDoc]  # the activations it still owes
    system: Optional[SystemFacts]  # null when the request asked for no needs


class ChangeReply(TypedDict):
    """A committed apply or rollback."""

    ok: Literal[True]
    release_id: str
    previous: Optional[str]
    warnings: list[str]


class ReleasesReply(TypedDict):
    ok: Literal[True]
    current: Optional[str]
    releases: list[ReleaseEntry]


class RecoverReply(TypedDict):
    """What `recover` did about an interrupted change ("busy": a change holds the lock and
    finishes or rolls back itself), the release now current and the roles still owed a
    reload or restart (run by the next change)."""

    ok: Literal[True]
    outcome: Literal["nothing", "rolled-back", "rolled-forward", "busy"]
    release_id: Optional[str]
    owed: list[str]
    warnings: list[str]


def failure_reply(
    step: str,
    message: str,
    warnings: list[str],
    rolled_back_to: Optional[str] = None,
    rollback_errors: Optional[list[str]] = None,
) -> FailureReply:
    return {
        "ok": False,
        "step": step,
        "message": message,
        "warnings": warnings,
        "rolled_back_to": rolled_back_to,
        "rollback_errors": rollback_errors or [],
    }


REQUESTS: dict[str, Any] = {
    "observe": ObserveRequest,
    "apply": ApplyRequest,
    "rollback": RollbackRequest,
    "releases": ReleasesRequest,
    "recover": RecoverRequest,
}
REPLIES: dict[str, Any] = {
    "observe": ObserveReply,
    "apply": ChangeReply,
    "rollback": ChangeReply,
    "releases": ReleasesReply,
    "recover": RecoverReply,
}
