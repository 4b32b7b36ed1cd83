"""The on-host program's entry point: `<program> COMMAND --root R [--args-b64 B | --args-file F]`.

The controller ships this package as one zip (`compiler.push.hostcall`) and runs it with
`python3 -I -S`. Its input is ONE JSON document (zlib + base64 in argv, or a file it deletes),
checked against its declaration (`wire.REQUESTS`) before anything else; its output is ONE JSON
document on stdout (`wire.REPLIES`, or a `wire.FailureReply` and a non-zero exit). Commands:

- `observe`: the current release, its manifest, the live files, owed activations (`facts`).
- `apply`: the whole release transaction in one process under the host lock (`transaction`).
- `rollback`: reinstall a stored release the same way (`transaction`).
- `releases`: the stored releases (`facts`).
- `recover`: put the live files back to one release after an interrupted change (`recover`);
  the boot hook runs it from the stable copy `/var/lib/mailcfg/onhost.pyz` with no arguments.
- `activate --role R…`: reload and verify roles' services with the current release's commands
  (`activate`); certbot's renewal hook runs it from the stable copy. Host-side only: its
  documents are declared in `activate`, not on the wire.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import zlib
from collections.abc import Callable
from typing import Any

from .activate import ActivateRequest, request_from_roles
from .fileops import read_json
from .hostroot import Host, StepFailed
from .wire import REQUESTS, failure_reply
from .wirecheck import WireError, check_document

Command = Callable[[Host, Any, list[str]], Any]
# Every command's request declaration: the wire's, and those run on the host only.
COMMAND_REQUESTS: dict[str, Any] = {**REQUESTS, "activate": ActivateRequest}


def load_command(name: str) -> Command:
    """The command's function. Imported here: every run compiles the modules it imports
    (a zip holds no bytecode for the host's Python), and `observe`, run by every plan, needs
    neither the transaction nor tar."""
    if name in ("observe", "releases"):
        from . import facts

        return facts.cmd_observe if name == "observe" else facts.cmd_releases
    if name == "recover":
        from . import recover

        return recover.cmd_recover
    if name == "activate":
        from . import activate

        return activate.cmd_activate
    from . import transaction

    return transaction.cmd_apply if name == "apply" else transaction.cmd_rollback


def decode_request(ns: argparse.Namespace, host: Host) -> object:
    """The request document, checked against the command's declaration."""
    doc: object = {}
    if ns.role:
        doc = request_from_roles(ns.role)
    elif ns.args_b64:
        doc = json.loads(zlib.decompress(base64.b64decode(ns.args_b64)))
    elif ns.args_file:
        path = host.path(ns.args_file)
        doc = read_json(path, {})
        os.unlink(path)
    try:
        check_document(doc, COMMAND_REQUESTS[ns.command], f"{ns.command} request")
    except WireError as exc:
        raise StepFailed("input", str(exc)) from None
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailcfg-onhost")
    parser.add_argument("command", choices=sorted(COMMAND_REQUESTS))
    parser.add_argument("--root", default="/")
    parser.add_argument("--owners", choices=["auto", "real", "recorded"], default="auto")
    parser.add_argument("--args-b64", default="")
    parser.add_argument("--args-file", default="")
    parser.add_argument("--role", action="append", default=[], help="activate: a role")
    ns = parser.parse_args(argv)
    host = Host(ns.root, ns.owners)
    warnings: list[str] = []
    try:
        host.check_state()
        result = load_command(ns.command)(host, decode_request(ns, host), warnings)
    except StepFailed as exc:
        result = failure_reply(exc.step, exc.message, warnings)
    except (OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        result = failure_reply(ns.command, f"{type(exc).__name__}: {exc}", warnings)
    try:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")  # ASCII: safe in any locale
        sys.stdout.flush()
    except BrokenPipeError:
        # The controller went away (Ctrl-C, a dropped connection); the change is done either
        # way, and the next plan shows where the host is.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if result["ok"] else 1
