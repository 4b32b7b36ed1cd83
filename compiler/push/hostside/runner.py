"""Run a role's commands on the host (build, validate, reload, verify) with `/bin/sh`.

The commands come from the roles (rendered by the controller, every value quoted there), with
`{stage}` replaced by the staged tree. On a directory root a command that is not installed
(exit 127) is skipped with a warning instead of failing, since a preview machine need not have
Postfix; on "/" it fails.
"""

from __future__ import annotations

import os
import subprocess

from .hostroot import Host, StepFailed
from .wire import ActivationDoc

COMMAND_TIMEOUT = 300.0
NOT_FOUND = 127  # the shell's "command not found"


def run_commands(
    host: Host, step: str, commands: list[str], stage: str | None, warnings: list[str]
) -> None:
    """Run `commands` in order; the first that fails raises `StepFailed(step, its output)`."""
    env = dict(os.environ, MAILCFG_ROOT=host.root)
    if stage:
        env["MAILCFG_STAGE"] = stage
    for template in commands:
        command = template.replace("{stage}", stage or "")
        try:
            proc = subprocess.run(
                command,
                shell=True,
                cwd=host.root,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(step, f"{command}: timed out after {COMMAND_TIMEOUT:.0f}s") from None
        output = (proc.stderr + proc.stdout).decode(errors="replace").strip()
        if proc.returncode == NOT_FOUND and not host.is_system:
            warnings.append(f"{step} skipped on a local root: {output}")
            continue
        if proc.returncode != 0:
            detail = output or "(no output)"
            raise StepFailed(step, f"{command}: exit {proc.returncode}: {detail}")


def merge_activations(
    first: list[ActivationDoc], second: list[ActivationDoc]
) -> list[ActivationDoc]:
    """Union by role, `first` wins."""
    seen = {a["role"] for a in first}
    return list(first) + [a for a in second if a["role"] not in seen]
