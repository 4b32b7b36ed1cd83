"""Open the `Transport` a host's spec asks for: a local directory root or SSH.

`compiler.ssh` (fabric, paramiko) is imported only when a host uses SSH, so local-only runs
and tests never pay for it.
"""

from __future__ import annotations

from pathlib import Path

from compiler.transport import LocalTransport, Transport, TransportError
from schemas.inventory import HostSpec, TransportKind


def open_transport(name: str, spec: HostSpec, *, base_dir: Path) -> Transport:
    """The transport of host `name`. A local root that is relative is taken relative to
    `base_dir` (the current directory for the CLI)."""
    if spec.transport is TransportKind.LOCAL:
        if not spec.root:
            raise TransportError(name, "transport: local needs a `root` directory", "connect")
        root = Path(spec.root)
        return LocalTransport(name, root if root.is_absolute() else base_dir / root)
    from compiler.ssh import SshTransport

    return SshTransport(name, spec)
