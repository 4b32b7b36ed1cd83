"""The inventory's git working copy as the web app's store: one validated commit per change.

`commit_edit` runs under a lock (a thread lock and an flock in the git directory, so two apps
on one checkout serialize too): it reads the domain file as of HEAD, lets the edit make the new
text (the edit decides access and may refuse), validates the whole inventory with the changed
file through the loader `mailcfg validate` uses, writes the commit with git's plumbing (the
person as author) and moves HEAD only if it is still the commit the edit started from. When
HEAD moved in between, the edit runs again on the new HEAD; nothing is ever lost or forced.
Only then is the working file replaced. An invalid or refused change writes nothing.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compiler.load.diagnostics import InventoryError
from compiler.load.inventory import DOMAINS_DIR, INVENTORY_FILE, load_inventory
from compiler.load.safefiles import DOMAIN_SUFFIXES, Refused, list_domain_files, read_regular

RETRIES = 3
GIT_TIMEOUT = 60.0


class CommitRefused(Exception):
    """The change was not committed; `str()` is the message for the person (no secrets)."""


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    email: str


@dataclass(frozen=True, slots=True)
class Edited:
    """What an edit made of a file's text: the new text and the commit message's subject."""

    text: str
    message: str


@dataclass(frozen=True, slots=True)
class Committed:
    commit: str
    path: str  # in the repository
    message: str
    deployed: str = ""  # what the after-commit step said (an apply's recap), if any


Edit = Callable[[str], Edited]


class GitInventory:
    """An inventory directory inside a git working copy (possibly below its top level)."""

    def __init__(self, inventory: Path, committer: Person) -> None:
        self.inventory = inventory.resolve()
        self.committer = committer
        self.toplevel = Path(self._git_in(self.inventory, "rev-parse", "--show-toplevel"))
        self.prefix = self.inventory.relative_to(self.toplevel.resolve()).as_posix()
        git_dir = Path(self._git_in(self.inventory, "rev-parse", "--absolute-git-dir"))
        self._lock_path = git_dir / "mailcfg-web.lock"
        self._lock = threading.Lock()

    # --- reading --------------------------------------------------------------------------------

    def head(self) -> str:
        return self._git("rev-parse", "--verify", "HEAD^{commit}")

    def repo_path(self, relative: str) -> str:
        """`relative` (to the inventory) as a path in the repository."""
        return relative if self.prefix in ("", ".") else f"{self.prefix}/{relative}"

    def domain_file(self, domain: str) -> str:
        """The domain's file relative to the inventory (`domains/<domain>.yml` or `.yaml`)."""
        for suffix in DOMAIN_SUFFIXES:
            relative = f"{DOMAINS_DIR}/{domain}{suffix}"
            if (self.inventory / relative).is_file():
                return relative
        raise CommitRefused(f"no domain file for {domain}")

    # --- changing -------------------------------------------------------------------------------

    def commit_edit(
        self,
        relative: str,
        edit: Edit,
        author: Person,
        after: Callable[[], str] | None = None,
    ) -> Committed:
        """Commit `edit` of the inventory file `relative`; raise `CommitRefused` (or what the
        edit raises) with nothing written. `after` runs once committed, still under the lock
        (an apply); what it says is kept in the result, and its failure undoes nothing."""
        path = self.repo_path(relative)
        with self._locked():
            for _ in range(RETRIES):
                base = self.head()
                old = self._git("cat-file", "blob", f"{base}:{path}", strip=False)
                if self._worktree_text(relative) != old:
                    raise CommitRefused(
                        f"{path} has uncommitted changes in the server's working copy; "
                        "an administrator must commit or discard them first"
                    )
                edited = edit(old)
                if edited.text == old:
                    raise CommitRefused("nothing changed")
                self.validate(relative, edited.text)
                commit = self._make_commit(base, path, edited, author)
                if self._move_head(base, commit):
                    self._write_worktree(relative, path, edited.text)
                    deployed = _run_after(after) if after is not None else ""
                    return Committed(commit, path, edited.message, deployed)
            raise CommitRefused("the branch kept moving while saving; please try again")

    def validate(self, relative: str, text: str) -> None:
        """Load the inventory as it would be with `text` in `relative`; raise `CommitRefused`
        with the loader's messages (file:line:col, named as in the repository)."""
        with tempfile.TemporaryDirectory(prefix="mailcfg-web-") as tmp:
            root = Path(tmp)
            self._copy_inventory(root)
            (root / relative).write_text(text, encoding="utf-8")
            try:
                load_inventory(root)
            except InventoryError as exc:
                shown = f"{self.prefix}/" if self.prefix not in ("", ".") else ""
                lines = [d.format().replace(f"{root}/", shown) for d in exc.diagnostics]
                raise CommitRefused("the change is invalid:\n" + "\n".join(lines)) from None

    # --- helpers --------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _copy_inventory(self, root: Path) -> None:
        """The inventory's files into `root` (regular files only, as the loader reads them)."""
        (root / DOMAINS_DIR).mkdir()
        top = os.open(self.inventory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            (root / INVENTORY_FILE).write_bytes(read_regular(INVENTORY_FILE, top))
            domains = os.open(DOMAINS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
            try:
                for name in list_domain_files(domains):
                    (root / DOMAINS_DIR / name).write_bytes(read_regular(name, domains))
            finally:
                os.close(domains)
        except (OSError, Refused) as exc:
            raise CommitRefused(f"the inventory cannot be read: {exc}") from None
        finally:
            os.close(top)

    def _worktree_text(self, relative: str) -> str | None:
        directory, _, name = relative.rpartition("/")
        fd = os.open(self.inventory / directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            return read_regular(name, fd).decode("utf-8")
        except (OSError, Refused, UnicodeDecodeError):
            return None
        finally:
            os.close(fd)

    def _make_commit(self, base: str, path: str, edited: Edited, author: Person) -> str:
        blob = self._git("hash-object", "-w", "--no-filters", "--stdin", input=edited.text)
        mode = self._git("ls-tree", base, "--", path).split(" ", 1)[0] or "100644"
        with tempfile.TemporaryDirectory(prefix="mailcfg-web-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", base, env=env)
            self._git("update-index", "--cacheinfo", f"{mode},{blob},{path}", env=env)
            tree = self._git("write-tree", env=env)
        env = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": self.committer.name,
            "GIT_COMMITTER_EMAIL": self.committer.email,
        }
        return self._git("commit-tree", tree, "-p", base, "-F", "-", input=edited.message, env=env)

    def _move_head(self, base: str, commit: str) -> bool:
        """Compare-and-swap: HEAD (its branch) moves to `commit` only if it is still `base`."""
        result = subprocess.run(
            [
                "git",
                "-C",
                str(self.toplevel),
                "update-ref",
                "-m",
                "mailcfg web",
                "HEAD",
                commit,
                base,
            ],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
        return result.returncode == 0

    def _write_worktree(self, relative: str, path: str, text: str) -> None:
        target = self.inventory / relative
        fd, tmp = tempfile.mkstemp(prefix=".mailcfg-web-", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        blob = self._git("rev-parse", f"HEAD:{path}")
        mode = self._git("ls-tree", "HEAD", "--", path).split(" ", 1)[0]
        self._git("update-index", "--cacheinfo", f"{mode},{blob},{path}")

    def _git(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        strip: bool = True,
    ) -> str:
        return _run_git(self.toplevel, args, input=input, env=env, strip=strip)

    @staticmethod
    def _git_in(directory: Path, *args: str) -> str:
        return _run_git(directory, args)


def _run_after(after: Callable[[], str]) -> str:
    try:
        return after()
    except Exception as exc:  # the commit stands; the person is told
        return f"committed, but the step after the commit failed: {exc}"


def _run_git(
    directory: Path,
    args: tuple[str, ...],
    *,
    input: str | None = None,
    env: dict[str, str] | None = None,
    strip: bool = True,
) -> str:
    result = subprocess.run(
        ["git", "-C", str(directory), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        raise CommitRefused(f"git {args[0]} failed: {result.stderr.strip()[:500]}")
    return result.stdout.strip() if strip else result.stdout
