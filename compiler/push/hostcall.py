"""Run the on-host program (`push/hostside/`) over a `Transport`: a JSON request in, a JSON
reply out, both declared in `push.hostside.wire` and the reply checked on arrival.

The program is the modules of `hostside/` zipped, as they are, into one file that `python3`
runs (`onhost-<digest>.pyz`, the digest covering every module). It lives on the host at that
content-addressed path: a call first runs it there, the host's shell checking the file's whole
sha256 before `python3` opens it, and only uploads it when the host reports it missing or not
that content (an upload cut short, a disk that lost it), so a steady-state call is ONE round
trip and a damaged copy never runs and never sticks. Also the JSON codec of `Activation`,
shared by observe (pending activations) and apply.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar, cast

from compiler.connectors.transport import CommandResult, Transport
from compiler.push.hostside.wire import ActivationDoc, FailureReply
from compiler.push.hostside.wirecheck import WireError, check_document
from compiler.types import Activation

STATE_DIR = "/var/lib/mailcfg"
_MISSING = "MAILCFG-ONHOST-MISSING"
# One argv string must stay under Linux's MAX_ARG_STRLEN (128 KiB); larger arguments are
# uploaded as a file (one more round trip).
_MAX_INLINE_ARGS = 96 * 1024
# Inside the zip the package has a name no standard-library module has; `__main__.py` at the
# top is what `python3 program.pyz` runs.
_PACKAGE = "mailcfg_onhost"
_ZIP_MAIN = f"import sys\nfrom {_PACKAGE}.onhost import main\nsys.exit(main())\n".encode()
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same modules give the same digest anywhere

Reply = TypeVar("Reply")
Warn = Callable[[str], None]


class HostError(Exception):
    """A step on the host failed; `message` is the tool's own text (e.g. Postfix's error).
    After a failure past install, `rolled_back_to` is the release put back (None when the
    live files were never touched or there was no previous release) and `rollback_errors`
    what could not be put back."""

    def __init__(
        self,
        host: str,
        step: str,
        message: str,
        rolled_back_to: str | None = None,
        rollback_errors: Sequence[str] = (),
    ) -> None:
        super().__init__(f"{host}: {step}: {message}")
        self.host = host
        self.step = step
        self.message = message
        self.rolled_back_to = rolled_back_to
        self.rollback_errors = tuple(rollback_errors)


def onhost_script() -> tuple[str, bytes]:
    """The program's host path and content: every module of `hostside/` in one zip, named
    by the digest of the whole."""
    content = zip_program(Path(__file__).parent / "hostside")
    digest = hashlib.sha256(content).hexdigest()[:12]
    return f"{STATE_DIR}/onhost-{digest}.pyz", content


def zip_program(source: Path) -> bytes:
    """The modules of `source` (`*.py`), read as data, as a zip `python3` runs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as program:
        _add_module(program, "__main__.py", _ZIP_MAIN)
        for module in sorted(source.glob("*.py")):
            _add_module(program, f"{_PACKAGE}/{module.name}", module.read_bytes())
    return buf.getvalue()


def _add_module(program: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16
    program.writestr(info, data)


def _shell_command(script: str, digest: str, command: str, arg_option: str) -> str:
    # MAILCFG_ROOT is set by LocalTransport (a directory standing for "/"); unset on real hosts.
    # The whole digest is checked on every run (~1 ms): a file cut short by a dropped upload
    # or emptied by a crash must be replaced, never run and never trusted for its name.
    return (
        'R="${MAILCFG_ROOT:-/}"; S="${MAILCFG_ROOT:-}' + script + '"; '
        f'[ -f "$S" ] && [ "$(sha256sum < "$S" 2>/dev/null)" = "{digest}  -" ] || '
        f"{{ echo {_MISSING} >&2; exit 3; }}; "
        # -I -S: the program is stdlib-only, so ignore PYTHON* variables, the user's site and
        # site-packages: nothing on the host can shadow a module, and it starts ~30 ms sooner.
        f'exec python3 -I -S "$S" {command} --root "$R" {arg_option}'
    )


def call_onhost(
    transport: Transport,
    command: str,
    args: Mapping[str, object],
    reply: type[Reply],
    *,
    error: type[HostError] = HostError,
    warn: Warn | None = None,
    timeout: float | None = None,
) -> Reply:
    """Run `command` of the on-host program with `args` (its `wire` request); return its
    reply, checked against `reply` (a `wire` declaration). The reply's warnings go to `warn`.

    Raises `error` (a HostError) naming the failed step when the host reports a failure, and
    a HostError when the program cannot run or its reply is not what `wire` declares."""
    script, content = onhost_script()
    digest = hashlib.sha256(content).hexdigest()
    payload = json.dumps(args, sort_keys=True).encode()
    inline = base64.b64encode(zlib.compress(payload, 6)).decode()
    if len(inline) <= _MAX_INLINE_ARGS:
        arg_option = f"--args-b64 {inline}"
    else:
        args_path = f"{STATE_DIR}/incoming/args-{hashlib.sha256(payload).hexdigest()[:16]}.json"
        transport.put(args_path, payload, 0o600)
        arg_option = f"--args-file {args_path}"
    shell = _shell_command(script, digest, command, arg_option)
    result = transport.run(shell, timeout=timeout)
    if _program_missing(result):
        transport.put(script, content, 0o700)
        result = transport.run(shell, timeout=timeout)
        if _program_missing(result):
            problem = f"the on-host program at {script} does not match sha256 {digest} after upload"
            raise HostError(transport.host, command, problem)
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        detail = (result.stderr or result.stdout).strip()[-2000:] or f"exit {result.exit_code}"
        if result.exit_code == 127:
            detail = f"python3 is not installed on the host ({detail})"
        raise HostError(transport.host, command, detail) from None
    return check_reply(transport.host, command, answer, reply, error=error, warn=warn)


def _program_missing(result: CommandResult) -> bool:
    """The host's shell found no program at its path, or not the one this controller ships."""
    return result.exit_code == 3 and _MISSING in result.stderr


def check_reply(
    host: str,
    command: str,
    answer: object,
    reply: type[Reply],
    *,
    error: type[HostError] = HostError,
    warn: Warn | None = None,
) -> Reply:
    """`answer` as `reply` declares it; a failure reply raised as `error`; any other
    document a HostError naming the field that is wrong."""
    failed = isinstance(answer, dict) and answer.get("ok") is False
    try:
        check_document(answer, FailureReply if failed else reply, "reply")
    except WireError as exc:
        raise HostError(host, command, f"malformed {exc}") from None
    if warn is not None and isinstance(answer, dict):
        for text in answer.get("warnings", ()):
            warn(text)
    if failed:
        failure = cast(FailureReply, answer)
        raise error(
            host,
            failure["step"],
            failure["message"] or "failed without a message",
            rolled_back_to=failure["rolled_back_to"],
            rollback_errors=failure["rollback_errors"],
        )
    return cast(Reply, answer)


def activation_to_json(activation: Activation) -> ActivationDoc:
    return {
        "role": activation.role,
        "service": activation.service,
        "action": activation.action,
        "build": list(activation.build),
        "validate": list(activation.validate),
        "apply": list(activation.apply),
        "verify": list(activation.verify),
    }


def activation_from_json(doc: ActivationDoc) -> Activation:
    return Activation(
        role=doc["role"],
        service=doc["service"],
        action=doc["action"],
        build=tuple(doc["build"]),
        validate=tuple(doc["validate"]),
        apply=tuple(doc["apply"]),
        verify=tuple(doc["verify"]),
    )
