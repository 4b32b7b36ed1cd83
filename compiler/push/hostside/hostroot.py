"""The host's layout under its root, and the error every step raises.

R is "/" on a real host; a local directory root passes its own path and every host path is
prefixed with it. Ownership: on "/" files get their owner/group; on another root (a local preview
directory) ownership is recorded but not applied unless `--owners real` is given: chowning files
in a working directory to `postfix` would surprise, and a non-root user cannot.
"""

from __future__ import annotations

import os

STATE_DIR = "var/lib/mailcfg"


class StepFailed(Exception):
    """`step` of a command failed; `message` is the tool's own text where there is one."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


class Host:
    """The host's layout under `root`."""

    def __init__(self, root: str, owners: str) -> None:
        self.root = os.path.abspath(root)
        self.is_system = self.root == "/"
        self.real_owners = owners == "real" or (owners == "auto" and self.is_system)
        # A directory root has no services of its own: its reload/verify commands would act on
        # this machine's Postfix, Dovecot and systemd. Build and validate still run there.
        services = os.environ.get("MAILCFG_SERVICES", "auto")
        self.run_services = services == "run" or (services == "auto" and self.is_system)
        self.state = os.path.join(self.root, STATE_DIR)
        self.checked: set[str] = set()  # directories known to hold no link on their way

    def path(self, host_path: str) -> str:
        parts = host_path.split("/")
        # Only a normalized absolute path: no "..", ".", "//" (which could leave the root or
        # the staging directory), no NUL.
        if parts[0] != "" or any(p in ("", ".", "..") for p in parts[1:]) or "\0" in host_path:
            raise StepFailed("input", f"not an absolute file path: {host_path!r}")
        local = os.path.join(self.root, host_path[1:])
        if not self.is_system:
            self.check_no_link(os.path.dirname(local))
        return local

    def check_no_link(self, directory: str) -> None:
        """On a directory root, refuse a symbolic link on the way from the root down to
        `directory` (where it exists): the root may lie in a checkout that holds
        `etc -> /etc`, and every read, write and delete must stay below it. On "/" links
        are the system's own."""
        if directory in self.checked:
            return
        parent = os.path.dirname(directory)
        if directory != self.root and parent != directory:
            self.check_no_link(parent)
        if os.path.islink(directory):
            raise StepFailed(
                "input",
                f"{directory} is a symbolic link; a directory root is used only "
                "through real directories below it",
            )
        self.checked.add(directory)

    def check_state(self) -> None:
        """On a directory root, no symbolic link on the way to or anywhere below the state
        directory (releases are pruned and staged there with rmtree and plain paths)."""
        if self.is_system:
            return
        self.check_no_link(self.state)
        for dirpath, dirs, names in os.walk(self.state):
            for name in dirs + names:
                if os.path.islink(os.path.join(dirpath, name)):
                    raise StepFailed(
                        "input",
                        f"{os.path.join(dirpath, name)} is a symbolic link; the "
                        "state directory of a directory root holds none",
                    )

    def state_path(self, *parts: str) -> str:
        return os.path.join(self.state, *parts)

    def release_dir(self, release_id: str) -> str:
        if not release_id or "/" in release_id or release_id.startswith("."):
            raise StepFailed("input", f"bad release id {release_id!r}")
        return os.path.join(self.state, "releases", release_id)

    def tree_path(self, release_id: str, host_path: str) -> str:
        return os.path.join(self.release_dir(release_id), "tree", host_path.lstrip("/"))
