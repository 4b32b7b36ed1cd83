"""Central value types passed between pipeline stages (frozen dataclasses).

Rendered files, file trees, observed host state, plans and releases. No behaviour beyond
digests and small lookups: each stage module owns its logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class RenderedFile:
    """One file the compiler wants on a host. `path` is absolute on the host."""

    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    role: str = ""
    sensitive: bool = False  # never print its content (passwords, keys)
    # What a plan may show of a sensitive file (`compiler.render.masking.masked_view`): how to
    # mask it (a render's file: a mask kind), or the view itself (a stored release's file).
    # Neither: nothing but that it changed.
    mask: str | None = None
    shown: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True, slots=True)
class FileTree(Mapping[str, RenderedFile]):
    """All files for one host, by absolute path."""

    files: Mapping[str, RenderedFile] = field(default_factory=dict)

    def __getitem__(self, path: str) -> RenderedFile:
        return self.files[path]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.files))

    def __len__(self) -> int:
        return len(self.files)

    @property
    def digest(self) -> str:
        """Stable digest of paths, metadata and contents: the release's identity."""
        h = hashlib.sha256()
        for path in self:
            f = self.files[path]
            h.update(f"{path}\0{f.mode:o}\0{f.owner}\0{f.group}\0{f.sha256}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ObservedFile:
    sha256: str
    mode: int
    owner: str
    group: str


@dataclass(frozen=True, slots=True)
class ManagedFile:
    """A file as the current release installed it (its manifest entry)."""

    sha256: str
    mode: int
    owner: str
    group: str
    role: str = ""
    sensitive: bool = False
    shown: str | None = None  # the masked view recorded with the release (sensitive files)


@dataclass(frozen=True, slots=True)
class HostState:
    """What is on the host now: the current release and every managed file's metadata.
    `files` covers the paths of the current manifest plus the desired ones (missing → absent)."""

    release_id: str | None
    files: Mapping[str, ObservedFile] = field(default_factory=dict)
    # Content now on the host of files that differ from the desired ones (for diffs); partial:
    # never sensitive or very large files.
    previous: Mapping[str, bytes] = field(default_factory=dict)
    # The current release's manifest (rendered files only, not derived maps): drift and deletes.
    managed: Mapping[str, ManagedFile] = field(default_factory=dict)
    # An apply that stopped after recording its activations (crash): its release id and the
    # activations it still owes, so the next apply reloads even if every file is already in place.
    interrupted: str | None = None
    pending: tuple[Activation, ...] = ()
    # The machine's facts about what the roles need; None for a local root (not a machine).
    system: SystemFacts | None = None


class ChangeKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    kind: ChangeKind
    before: bytes | None
    after: bytes | None
    role: str = ""
    sensitive: bool = False
    drift: bool = False  # the host's file differs from what the current release installed
    meta_only: bool = False  # only mode/owner differ
    # "0640 root:postfix" before/after when mode or ownership change ("" otherwise).
    meta_before: str = ""
    meta_after: str = ""
    # A sensitive file's masked views (`compiler.render.masking`) as the current release
    # recorded it and as wanted; None where there is none. Never its content.
    shown_before: str | None = None
    shown_after: str | None = None


@dataclass(frozen=True, slots=True)
class Activation:
    """What a role does once its files changed, as shell commands run on the host.

    `build` and `validate` run against the staged tree: `{stage}` in them is replaced by the
    staging directory that mirrors "/" (a staged /etc/postfix/main.cf is at
    `{stage}/etc/postfix/main.cf`). `build` makes derived files in staging (postmap), which are
    installed with the rendered ones (before them). `apply` runs after install: reload or restart
    (empty when the service watches its own files)."""

    role: str
    service: str
    action: str  # "reload" | "restart" | "none"
    build: tuple[str, ...] = ()
    validate: tuple[str, ...] = ()
    apply: tuple[str, ...] = ()
    verify: tuple[str, ...] = ()  # after apply: the service answers
    # What `apply` does, in a plan's words, when the role says it better than its action
    # (role.yml `summary:`); "" for the wording of the action.
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    host: str
    changes: tuple[FileChange, ...]
    activations: tuple[Activation, ...]
    tree_digest: str
    current_release: str | None
    # Whether the host runs the activations' reload and verify commands: a local root does
    # not (they would act on this machine's services).
    runs_services: bool = True
    # What apply does to the machine before it stages the files (packages, users, …), what it
    # ensures (None: nothing, a local root) and notes on what it leaves alone.
    host_changes: tuple[HostChange, ...] = ()
    needs: HostNeeds | None = None
    notes: tuple[str, ...] = ()
    agent: AgentChange | None = None

    @property
    def has_changes(self) -> bool:
        # Activations without file changes are owed by an interrupted apply: still work to do.
        return bool(self.changes or self.activations or self.host_changes)


@dataclass(frozen=True, slots=True)
class Release:
    id: str
    tree_digest: str
    previous_id: str | None


# --- what a host needs besides its files (roles' `needs:`), and what it has ----------------------


@dataclass(frozen=True, slots=True)
class GroupNeed:
    name: str
    gid: int | None = None  # None: any


@dataclass(frozen=True, slots=True)
class UserNeed:
    name: str
    group: str  # primary group
    uid: int | None = None  # None: any
    home: str = "/nonexistent"
    shell: str = "/usr/sbin/nologin"


@dataclass(frozen=True, slots=True)
class DirectoryNeed:
    path: str
    owner: str = "root"
    group: str = "root"
    mode: int = 0o755


@dataclass(frozen=True, slots=True)
class HostNeeds:
    """What a host's roles need on the machine, merged (`compiler.render.roles.make_needs`):
    Debian packages and the debconf answers set before they are installed, system groups and
    users, directories, and systemd units to enable."""

    packages: tuple[str, ...] = ()
    debconf: tuple[str, ...] = ()
    groups: tuple[GroupNeed, ...] = ()
    users: tuple[UserNeed, ...] = ()
    directories: tuple[DirectoryNeed, ...] = ()
    units: tuple[str, ...] = ()
    agent: bool = False  # a role runs mailcfg's agent: apply installs it (`push.agentdist`)


@dataclass(frozen=True, slots=True)
class ObservedDirectory:
    directory: bool  # False: something else is at the path
    mode: int
    owner: str
    group: str


@dataclass(frozen=True, slots=True)
class SystemFacts:
    """The machine as observed: its release, its Python, and each need's state (None:
    absent; a package's installed version; a user's (uid, gid); a unit's (enabled, active))."""

    os_id: str
    os_version: str
    os_name: str
    python: str = ""
    machine: str = ""
    packages: Mapping[str, str | None] = field(default_factory=dict)
    groups: Mapping[str, int | None] = field(default_factory=dict)
    users: Mapping[str, tuple[int, int] | None] = field(default_factory=dict)
    directories: Mapping[str, ObservedDirectory | None] = field(default_factory=dict)
    systemd: bool = False
    units: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    agent_current: str | None = None  # the agent install the live release runs
    agents_installed: tuple[str, ...] | None = None  # None: not asked (a directory root)


class HostChangeKind(StrEnum):
    INSTALL = "install"
    CREATE_GROUP = "create group"
    CREATE_USER = "create user"
    CREATE_DIRECTORY = "create directory"
    CHANGE_DIRECTORY = "change directory"
    ENABLE = "enable"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class AgentChange:
    """The controller's agent (`id` = `<version>-<wheel digest>`) replaces the host's; its
    wheels go with the bundle unless the host has that install (`upload`), made for the
    host's Python and architecture."""

    id: str
    version: str
    python: str
    machine: str
    upload: bool


@dataclass(frozen=True, slots=True)
class HostChange:
    """One thing apply does to the machine: `kind` of `subject` (a package, group, user,
    directory or unit); `detail` says more (`uid 5000, group vmail`, `0755 root:root -> …`)."""

    kind: HostChangeKind
    subject: str
    detail: str = ""
