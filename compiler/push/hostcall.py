"""Run the on-host script (`push/hostside/onhost.py`) over a `Transport`: JSON in, JSON out.

The script lives on the host at a content-addressed path. A call first runs it there and only
uploads it when the host reports it missing, so a steady-state call is ONE round trip. Also the
JSON codec of `Activation`, shared by observe (pending activations) and apply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compiler.connectors.transport import Transport
from compiler.types import Activation

STATE_DIR = "/var/lib/mailcfg"
_MISSING = "MAILCFG-ONHOST-MISSING"
# One argv string must stay under Linux's MAX_ARG_STRLEN (128 KiB); larger arguments are
# uploaded as a file (one more round trip).
_MAX_INLINE_ARGS = 96 * 1024


class HostError(Exception):
    """A step on the host failed; `message` is the tool's own text (e.g. Postfix's error)."""

    def __init__(self, host: str, step: str, message: str) -> None:
        super().__init__(f"{host}: {step}: {message}")
        self.host = host
        self.step = step
        self.message = message


def onhost_script() -> tuple[str, bytes]:
    """The script's host path and content."""
    # Read as data, not imported: the script runs on the host, the controller only ships it.
    content = Path(__file__).parent.joinpath("hostside", "onhost.py").read_bytes()
    digest = hashlib.sha256(content).hexdigest()[:12]
    return f"{STATE_DIR}/onhost-{digest}.py", content


def _shell_command(script: str, command: str, arg_option: str) -> str:
    # MAILCFG_ROOT is set by LocalTransport (a directory standing for "/"); unset on real hosts.
    return (
        'R="${MAILCFG_ROOT:-/}"; S="${MAILCFG_ROOT:-}' + script + '"; '
        f'[ -f "$S" ] || {{ echo {_MISSING} >&2; exit 3; }}; '
        # -I -S: the script is stdlib-only, so ignore PYTHON* variables, the user's site and
        # site-packages: nothing on the host can shadow a module, and it starts ~30 ms sooner.
        f'exec python3 -I -S "$S" {command} --root "$R" {arg_option}'
    )


def call_onhost(
    transport: Transport,
    command: str,
    args: Mapping[str, Any],
    *,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run `command` of the on-host script with `args`; return its JSON answer.

    Raises HostError when the script cannot run or answers something that is not JSON; an
    answer with `ok: false` is returned for the caller to turn into its own error."""
    script, content = onhost_script()
    payload = json.dumps(args, sort_keys=True).encode()
    inline = base64.b64encode(zlib.compress(payload, 6)).decode()
    if len(inline) <= _MAX_INLINE_ARGS:
        arg_option = f"--args-b64 {inline}"
    else:
        args_path = f"{STATE_DIR}/incoming/args-{hashlib.sha256(payload).hexdigest()[:16]}.json"
        transport.put(args_path, payload, 0o600)
        arg_option = f"--args-file {args_path}"
    shell = _shell_command(script, command, arg_option)
    result = transport.run(shell, timeout=timeout)
    if result.exit_code == 3 and _MISSING in result.stderr:
        transport.put(script, content, 0o700)
        result = transport.run(shell, timeout=timeout)
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        detail = (result.stderr or result.stdout).strip()[-2000:] or f"exit {result.exit_code}"
        if result.exit_code == 127:
            detail = f"python3 is not installed on the host ({detail})"
        raise HostError(transport.host, command, detail)
    return answer


def activation_to_json(activation: Activation) -> dict[str, Any]:
    return {
        "role": activation.role,
        "service": activation.service,
        "action": activation.action,
        "build": list(activation.build),
        "validate": list(activation.validate),
        "apply": list(activation.apply),
        "verify": list(activation.verify),
    }


def activation_from_json(doc: Mapping[str, Any]) -> Activation:
    return Activation(
        role=str(doc["role"]),
        service=str(doc.get("service", "")),
        action=str(doc.get("action", "none")),
        build=tuple(str(c) for c in doc.get("build", ())),
        validate=tuple(str(c) for c in doc.get("validate", ())),
        apply=tuple(str(c) for c in doc.get("apply", ())),
        verify=tuple(str(c) for c in doc.get("verify", ())),
    )
