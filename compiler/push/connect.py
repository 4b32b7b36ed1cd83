"""Open the `Transport` a host's spec asks for: a local directory root or SSH.

`compiler.connectors.ssh` (fabric, paramiko) is imported only when a host uses SSH, so
local-only runs and tests never pay for it.

A local root comes from the inventory, and a relative one lies in the checkout, which may be
hostile: it must resolve to the directory it names (no symbolic link on the way below
`base_dir`), is refused as "/" or a system directory (`LocalTransport`), and gets this
compiler's own on-host program written into it before any command runs there, so a program
committed into the root at the content-addressed path is never the one executed.
"""

from __future__ import annotations

from pathlib import Path

from compiler.connectors.confine import local_root_problem, normalize_root
from compiler.connectors.local import LocalTransport
from compiler.connectors.transport import Transport, TransportError
from compiler.push.hostcall import onhost_script
from schemas.inventory import HostSpec, TransportKind


def open_transport(name: str, spec: HostSpec, *, base_dir: Path) -> Transport:
    """The transport of host `name`. A local root that is relative is taken relative to
    `base_dir` (the inventory directory for the CLI)."""
    if spec.transport is TransportKind.LOCAL:
        if not spec.root:
            raise TransportError(name, "transport: local needs a `root` directory", "connect")
        transport = LocalTransport(name, _local_root(name, spec.root, base_dir))
        transport.put(*onhost_script(), 0o700)
        return transport
    from compiler.connectors.ssh import SshTransport

    return SshTransport(name, spec)


def _local_root(name: str, value: str, base_dir: Path) -> Path:
    problem = local_root_problem(value)
    if problem:
        raise TransportError(name, f"local root {value}: {problem}", "connect")
    root = Path(value)
    if root.is_absolute():
        return root
    named = base_dir.resolve() / normalize_root(value)
    if named.resolve() != named:
        raise TransportError(
            name,
            f"local root {value}: a symbolic link on the way leads to {named.resolve()}; "
            "a relative root must be a real directory below the inventory directory",
            "connect",
        )
    return named
