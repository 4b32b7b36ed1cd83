"""`web:` of `mailcfg.yml`: what `mailcfg web` does after each commit it makes (the server
team's choice): nothing more, apply it to the hosts serving the changed domain, or push it to
a branch for review. The remote is a remote's name, never a URL: where the inventory may be
sent is configured in the server's git config, not by whoever writes this file.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from schemas.common import Frozen, json_string, show_value

_REMOTE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_BRANCH_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_BRANCH = rf"{_BRANCH_PART}(?:/{_BRANCH_PART}){{0,9}}"


def _check_remote(value: str) -> str:
    if not re.fullmatch(_REMOTE, value):
        raise ValueError(f"{show_value(value)} is not a git remote's name (letters, digits, . _ -)")
    return value


def _check_branch(value: str) -> str:
    if not re.fullmatch(_BRANCH, value) or ".." in value or value.endswith((".lock", ".")):
        raise ValueError(f"{show_value(value)} is not a branch name")
    return value


RemoteName = Annotated[str, AfterValidator(_check_remote), json_string(_REMOTE, 64)]
BranchName = Annotated[str, AfterValidator(_check_branch), json_string(_BRANCH, 1009)]


class WebSettings(Frozen):
    """`web:` of `mailcfg.yml`."""

    after_commit: Literal["nothing", "apply", "push"] = Field(
        default="nothing",
        description="After each commit made on the web: nothing more, apply it to the hosts "
        "serving the changed domain (as `mailcfg apply --yes`), or push it to push_branch of "
        "push_remote for review. `mailcfg web --apply` or `--push` overrides it.",
    )
    push_remote: RemoteName = Field(default="origin", description="A remote's name.")
    push_branch: BranchName | None = Field(default=None, description="The branch pushed to.")

    @model_validator(mode="after")
    def _push_needs_branch(self) -> WebSettings:
        if self.after_commit == "push" and self.push_branch is None:
            raise ValueError("after_commit: push needs push_branch")
        return self
