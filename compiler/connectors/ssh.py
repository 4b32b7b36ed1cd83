"""`SshTransport`: the `Transport` protocol over one SSH connection per host (fabric/paramiko).

Security first: key authentication only (the spec's identity file, else the agent and default
keys; never a password), strict host-key checking against a known_hosts file (an unknown host is
refused naming its fingerprint unless `trust_on_first_use` records it; a changed key is always
refused), and `sudo -n` for a non-root user so nothing ever waits on a prompt.

The connection opens lazily on first use and is reused for every command; a broken connection
is dropped and reopened on the next call (never retrying the call that broke). Connection
problems raise `TransportError(host, message, step)`; a command's own failure is returned as its
exit code and output.

Commands go over raw paramiko channels of the fabric connection rather than `Connection.run`:
invoke's runner is text-only and polls stdin, while `put`/`get` need binary-safe stdin/stdout in
a single round trip (an SFTP upload cannot write as root through sudo anyway).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import os
import select
import shlex
import socket
import stat
import time
from pathlib import Path, PurePosixPath

import paramiko
from fabric import Config, Connection
from paramiko.hostkeys import HostKeyEntry

from compiler.connectors.transport import CommandResult, TransportError
from schemas.inventory import HostSpec

_READ_CHUNK = 1 << 16


def fingerprint_key(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key (`SHA256:base64`, unpadded)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def format_known_host_name(address: str, port: int) -> str:
    """The name a host's key is recorded under in known_hosts (OpenSSH's convention)."""
    return address if port == 22 else f"[{address}]:{port}"


def record_host_key(known_hosts: Path, name: str, key: paramiko.PKey) -> None:
    """Append `name key` to a known_hosts file (created 0600 in a 0700 directory), under a lock
    so parallel hosts' first connections don't interleave lines."""
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = HostKeyEntry([name], key).to_line()
    # Never through a symbolic link, never into anything but a regular file.
    fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{known_hosts} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def put_command(path: str, content: bytes, mode: int) -> str:
    """The shell command that writes its stdin to `path`: a private temp file beside it,
    renamed over `path` only when it holds exactly `content` (its sha256). A connection that
    drops mid-upload closes stdin, so `cat` ends "successfully" with part of the data: without
    the check the part would be renamed into place. Missing directories are created 0700 (a
    put's directory holds bundles with password hashes; what must be wider says so itself)."""
    target = PurePosixPath(path)
    parent = shlex.quote(str(target.parent))
    dest = shlex.quote(path)
    digest = hashlib.sha256(content).hexdigest()
    incomplete = shlex.quote(f"upload incomplete: sha256 of what arrived is not {digest}")
    # mktemp creates the file 0600, so secrets are never readable while in transit.
    return (
        f"(umask 077 && mkdir -p -- {parent}) && "
        f"tmp=$(mktemp -p {parent} {shlex.quote('.' + target.name + '.mailcfg.XXXXXX')}) "
        f'&& {{ cat > "$tmp" && {{ [ "$(sha256sum < "$tmp")" = "{digest}  -" ] || '
        f"{{ echo {incomplete} >&2; false; }}; }} "
        f'&& chmod {mode:o} "$tmp" && mv -f -- "$tmp" {dest} '
        f'|| {{ rc=$?; rm -f -- "$tmp"; exit $rc; }}; }}'
    )


class UnknownHostKeyError(paramiko.SSHException):  # type: ignore[misc]  # untyped base
    def __init__(self, name: str, key: paramiko.PKey, known_hosts: Path) -> None:
        super().__init__(
            f"host key unknown: {name} offered {key.get_name()} key {fingerprint_key(key)}, "
            f"which is not in {known_hosts}; verify the fingerprint out of band and add it "
            "(ssh-keyscan), or set ssh.trust_on_first_use: true for this host"
        )


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # untyped base
    """Called by paramiko only for a host with no key at all in known_hosts (a different key,
    of any type, is a `BadHostKeyException` before we get here)."""

    def __init__(self, known_hosts: Path, trust_on_first_use: bool) -> None:
        self.known_hosts = known_hosts
        self.trust_on_first_use = trust_on_first_use

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if not self.trust_on_first_use:
            raise UnknownHostKeyError(hostname, key, self.known_hosts)
        record_host_key(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


class _SessionRefused(TransportError):
    """The connection would not open a channel: nothing ran on the host."""


class SshTransport:
    """One host reached over SSH, as described by its inventory `HostSpec`."""

    def __init__(self, host_name: str, spec: HostSpec) -> None:
        self.host = host_name
        self.spec = spec
        ssh = spec.ssh
        self.known_hosts = Path(ssh.known_hosts or "~/.ssh/known_hosts").expanduser()
        self._conn: Connection | None = None
        # A root login needs no sudo; sudo for root would only add a failure mode.
        self._prefix = "sudo -n -- " if ssh.sudo and ssh.user != "root" else ""

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> Connection:
        ssh = self.spec.ssh
        connect_kwargs: dict[str, object] = {
            "allow_agent": ssh.identity_file is None,
            "look_for_keys": ssh.identity_file is None,
            "timeout": ssh.connect_timeout,
            "banner_timeout": ssh.connect_timeout,
            "auth_timeout": ssh.connect_timeout,
            "channel_timeout": ssh.connect_timeout,
        }
        if ssh.identity_file is not None:
            connect_kwargs["key_filename"] = [str(Path(ssh.identity_file).expanduser())]
        # The inventory is the only source of user/port/keys: no ~/.ssh/config surprises.
        config = Config(overrides={"load_ssh_configs": False})
        conn = Connection(
            host=self.spec.address,
            user=ssh.user,
            port=ssh.port,
            config=config,
            connect_kwargs=connect_kwargs,
        )
        client = conn.client
        if self.known_hosts.exists():
            try:
                client.load_host_keys(str(self.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise TransportError(
                    self.host, f"cannot read known_hosts {self.known_hosts}: {exc}"
                ) from exc
        # Replaces fabric's default AutoAddPolicy, which would accept any host key.
        client.set_missing_host_key_policy(
            _KnownHostsPolicy(self.known_hosts, ssh.trust_on_first_use)
        )
        try:
            conn.open()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            conn.close()
            raise TransportError(self.host, self._describe_connect_error(exc)) from exc
        transport = conn.transport
        if transport is not None:
            # Many small request/response exchanges: Nagle + delayed ACK would add ~40 ms each.
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Notice a dead peer during long validations instead of waiting for TCP.
            transport.set_keepalive(15)
        return conn

    def _describe_connect_error(self, exc: BaseException) -> str:
        ssh = self.spec.ssh
        where = f"{ssh.user}@{self.spec.address}:{ssh.port}"
        if isinstance(exc, UnknownHostKeyError):
            return str(exc)
        if isinstance(exc, paramiko.BadHostKeyException):
            return (
                f"host key CHANGED for {format_known_host_name(self.spec.address, ssh.port)}: "
                f"it offered {exc.key.get_name()} {fingerprint_key(exc.key)} but "
                f"{self.known_hosts} has {exc.expected_key.get_name()} "
                f"{fingerprint_key(exc.expected_key)}; refusing to connect (possible "
                "man-in-the-middle, or the host was reinstalled: fix known_hosts by hand)"
            )
        if isinstance(exc, paramiko.PasswordRequiredException):
            return f"identity file {ssh.identity_file} is encrypted; load it into ssh-agent"
        if isinstance(exc, paramiko.AuthenticationException):
            keys = ssh.identity_file or "ssh-agent and default keys"
            return f"authentication refused for {where} (tried {keys}; passwords are never used)"
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            reasons = {str(e) for e in exc.errors.values()}
            if all(isinstance(e, ConnectionRefusedError) for e in exc.errors.values()):
                return f"connection refused by {where} (is sshd running on that port?)"
            return f"cannot connect to {where}: {'; '.join(sorted(reasons))}"
        if isinstance(exc, TimeoutError):
            return (
                f"connection to {where} timed out after {ssh.connect_timeout:g}s "
                "(host down or unreachable?)"
            )
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {self.spec.address}: {exc.strerror}"
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"{where} is unreachable: {exc.strerror}"
        if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
            return f"{where} did not answer the SSH handshake in {ssh.connect_timeout:g}s"
        return f"cannot connect to {where}: {type(exc).__name__}: {exc}"

    def _transport(self) -> paramiko.Transport:
        """The live paramiko transport, connecting (again) if needed."""
        conn = self._conn
        if conn is not None and (conn.transport is None or not conn.transport.is_active()):
            self.close()
            conn = None
        if conn is None:
            conn = self._conn = self._connect()
            if self._prefix:
                self._check_sudo()
        assert conn.transport is not None
        return conn.transport

    def _check_sudo(self) -> None:
        """Fail once, clearly, when sudo would need a password (every command would)."""
        code, _, err = self._exec_line(
            "sudo -n -- true", None, self.spec.ssh.connect_timeout, "sudo"
        )
        if code != 0:
            self.close()
            raise TransportError(
                self.host,
                f"sudo -n refused for user {self.spec.ssh.user}: "
                f"{err.decode(errors='replace').strip()} (a NOPASSWD sudoers rule is required)",
                "sudo",
            )

    # -- commands -----------------------------------------------------------------------------

    def _exec(
        self, command: str, stdin: bytes | None, timeout: float | None, step: str
    ) -> tuple[int, bytes, bytes]:
        """Run `command` under `sh -c` (and sudo), feed `stdin`, return (exit, stdout, stderr)."""
        limit = self.spec.ssh.command_timeout if timeout is None else timeout
        line = f"{self._prefix}sh -c {shlex.quote(command)}"
        reused = self._conn is not None
        self._transport()
        try:
            return self._exec_line(line, stdin, limit, step, command)
        except _SessionRefused:
            if not reused:
                raise
        # A connection dropped while idle (server restart, NAT timeout) can still look active
        # until paramiko's reader thread sees the EOF. No command ran, so one retry on a fresh
        # connection is safe.
        self._transport()
        return self._exec_line(line, stdin, limit, step, command)

    def _exec_line(
        self, line: str, stdin: bytes | None, limit: float, step: str, command: str = ""
    ) -> tuple[int, bytes, bytes]:
        """Run one exact remote command line on the open connection."""
        assert self._conn is not None and self._conn.transport is not None
        transport = self._conn.transport
        try:
            chan = transport.open_session(timeout=self.spec.ssh.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise _SessionRefused(self.host, f"cannot open a session: {exc}", step) from exc
        try:
            return self._drive(chan, line, stdin, limit, step, command or line)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise TransportError(self.host, f"connection lost: {exc}", step) from exc
        finally:
            chan.close()

    def _drive(
        self,
        chan: paramiko.Channel,
        line: str,
        stdin: bytes | None,
        limit: float,
        step: str,
        command: str,
    ) -> tuple[int, bytes, bytes]:
        deadline = time.monotonic() + limit
        chan.exec_command(line)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out: list[bytes] = []
        err: list[bytes] = []
        while True:
            # Read as data comes: paramiko widens the SSH window only as we read, so a big
            # output would otherwise stall the remote side.
            while chan.recv_ready():
                out.append(chan.recv(_READ_CHUNK))
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(_READ_CHUNK))
            remaining = deadline - time.monotonic()
            if chan.eof_received or chan.closed:
                # No more data can come; the exit status follows the EOF.
                if chan.status_event.wait(max(remaining, 0)) or chan.closed:
                    break
            elif remaining > 0:
                select.select([chan], [], [], remaining)
            if deadline - time.monotonic() <= 0:
                raise TransportError(
                    self.host, f"command timed out after {limit:g}s: {command}", step
                )
        while chan.recv_ready():
            out.append(chan.recv(_READ_CHUNK))
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(_READ_CHUNK))
        transport = chan.get_transport()
        broken = transport is None or not transport.is_active()
        # paramiko reports -1 both for a command killed by a signal (sshd then sends no exit
        # status) and for a channel torn down with the connection: only the latter is ours.
        if chan.exit_status == -1 and broken:
            self.close()
            raise TransportError(self.host, f"connection lost while running: {command}", step)
        return chan.recv_exit_status(), b"".join(out), b"".join(err)

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        code, out, err = self._exec(command, None, timeout, "run")
        return CommandResult(
            command, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        )

    def put(self, path: str, content: bytes, mode: int = 0o644) -> None:
        """Write `content` to `path` atomically and only whole (`put_command`)."""
        target = PurePosixPath(path)
        if not target.is_absolute():
            raise ValueError(f"{self.host}: put needs an absolute path, got {path!r}")
        code, _, err = self._exec(put_command(path, content, mode), content, None, "put")
        if code != 0:
            raise OSError(f"{self.host}: cannot write {path}: {err.decode(errors='replace')}")

    def get(self, path: str) -> bytes:
        # C locale: cat's error text is what tells a missing file from a forbidden one.
        script = f"LC_ALL=C exec cat -- {shlex.quote(path)}"
        code, out, err = self._exec(script, None, None, "get")
        if code != 0:
            message = err.decode(errors="replace").strip()
            if message.endswith("No such file or directory"):
                raise FileNotFoundError(errno.ENOENT, f"{self.host}: no such file", path)
            if message.endswith("Permission denied"):
                raise PermissionError(errno.EACCES, f"{self.host}: permission denied", path)
            raise OSError(f"{self.host}: cannot read {path}: {message}")
        return out

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
