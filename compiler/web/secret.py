"""The session-signing secret: random, made once, kept in a file outside the inventory's git
working copy (mode 0600, owned by the user running the app)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

SECRET_BYTES = 32


class SecretError(ValueError):
    """The secret file cannot be used; the message says why."""


def default_secret_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mailcfg" / "web-secret"


def load_or_make_secret(path: Path, checkout: Path) -> bytes:
    """The secret in `path`, made there first if absent. Refused inside `checkout` (it would
    end up in git) or when the file is a link, not ours, or readable by others."""
    path = path.absolute()
    if path.resolve().is_relative_to(checkout.resolve()):
        raise SecretError(f"the secret file {path} must be outside the git working copy")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(SECRET_BYTES) + "\n")
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise SecretError(f"{path} is not a regular file owned by this user")
        if info.st_mode & 0o077:
            raise SecretError(f"{path} is readable by others (chmod 600 it)")
        text = f.read(1024).strip()
    if len(text) < 2 * SECRET_BYTES:
        raise SecretError(f"{path} holds no usable secret (delete it to make a new one)")
    return text.encode()
