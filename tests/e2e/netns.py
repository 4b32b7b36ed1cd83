"""Test hosts as Linux network namespaces, each with its own sshd, reachable from the runner.

`NetnsLab` owns a set of hosts for one test session: namespace `mcfg-<n>`, a veth pair whose
runner end sits on the bridge `mcfg-br0` (198.18.0.1/24, RFC 2544 benchmark range, never any
other non-loopback range), host address 198.18.0.<10+n>, its own `lo`, and an sshd started
inside the namespace with its own host key, pid file and authorized keys (a key the lab
generates). The lab's known_hosts file holds every host key, so strict checking works.

Hosts share this machine's filesystem: each gets a private directory (`host.root`) for the
config roots its inventory points at, and sees its own /var/lib/mailcfg (mailcfg's release
state, not movable by the inventory) and /opt/mailcfg (the agent installs apply makes) through
bind mounts in the private mount namespace its sshd runs in; `enter`/`run_in_host`/
`start_service` join both namespaces with nsenter. Host numbers are allocated under a lock and
each namespace records its owner PID, so parallel sessions never collide, and namespaces left
by a crashed session (owner dead) are removed by the next one. Everything is stopped by PID,
never by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE = "mcfg-br0"
RUNNER_ADDRESS = "198.18.0.1"
PREFIX_LEN = 24
NS_PREFIX = "mcfg-"
MAX_HOSTS = 240
STATE_DIR = Path("/run/mcfg-netns")  # owner files; /run is tmpfs, so a reboot clears it
LOCK_FILE = STATE_DIR / "lock"
READY_TIMEOUT = 10.0
# mailcfg's on-host state (releases, lock) and the agent installs apply makes: per host,
# through bind mounts in its namespace.
MAILCFG_STATE = "/var/lib/mailcfg"
AGENT_HOME = "/opt/mailcfg"


def host_address(index: int) -> str:
    return f"198.18.0.{10 + index}"


def run_cmd(args: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command on the runner; a failure raises with its stderr."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    names = []
    for line in run_cmd(["ip", "netns", "list"]).splitlines():
        if line.split():
            names.append(line.split()[0])
    return names


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def child_pids(pid: int) -> list[int]:
    """Running direct children of `pid` (from /proc/<pid>/task/*/children)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.extend(int(c) for c in (task / "children").read_text().split())
    return [c for c in children if process_running(c)]


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of TCP listeners in the network namespace of process `pid`: reads
    /proc/<pid>/net/tcp instead of connecting (a probe connection would show up in logs)."""
    found: set[tuple[str, int]] = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] != "0A":  # TCP_LISTEN
                continue
            hex_addr, hex_port = parts[1].split(":")
            octets = bytes.fromhex(hex_addr)[::-1]
            found.add((".".join(str(b) for b in octets), int(hex_port, 16)))
    return found


def wait_until(predicate: object, what: str, timeout: float = READY_TIMEOUT) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale_namespaces() -> None:
    """Delete our namespaces whose owning session is gone (a crashed earlier run). Call with the
    lab lock held."""
    for name in list_namespaces():
        if not name.startswith(NS_PREFIX):
            continue
        owner = STATE_DIR / f"{name}.owner"
        try:
            pid = int(owner.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid and pid_alive(pid):
            continue
        _kill_namespace_processes(name)
        run_cmd(["ip", "netns", "del", name], check=False)
        run_cmd(["ip", "link", "del", f"mcfg-v{name[len(NS_PREFIX) :]}"], check=False)
        owner.unlink(missing_ok=True)


def _kill_namespace_processes(name: str) -> None:
    # Processes are found by the namespace they live in (ours), never by process name.
    for pid_text in run_cmd(["ip", "netns", "pids", name], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_text), signal.SIGKILL)


def ensure_bridge() -> None:
    """The runner's side of the lab network (idempotent; call with the lab lock held)."""
    links = run_cmd(["ip", "-o", "link", "show"])
    if f" {BRIDGE}:" not in links:
        run_cmd(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run_cmd(["ip", "addr", "add", f"{RUNNER_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
    run_cmd(["ip", "link", "set", BRIDGE, "up"])


def remove_bridge_if_unused() -> None:
    if not any(n.startswith(NS_PREFIX) for n in list_namespaces()):
        run_cmd(["ip", "link", "del", BRIDGE], check=False)


@dataclass
class NetnsHost:
    """One namespace host. `root` is its private directory on the shared filesystem."""

    index: int
    root: Path
    ssh_port: int = 22
    sshd: subprocess.Popen[bytes] | None = None
    services: list[int] = field(default_factory=list)  # PIDs started in the host, to stop

    @property
    def name(self) -> str:
        return f"{NS_PREFIX}{self.index}"

    @property
    def address(self) -> str:
        return host_address(self.index)

    @property
    def veth(self) -> str:
        return f"mcfg-v{self.index}"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "sshd"

    @property
    def sshd_pid_file(self) -> Path:
        return self.ssh_dir / "sshd.pid"

    @property
    def state_dir(self) -> Path:
        """What this host sees as /var/lib/mailcfg."""
        return self.root / "var-lib-mailcfg"

    @property
    def agent_home(self) -> Path:
        """What this host sees as /opt/mailcfg (the agent's venvs an apply installs)."""
        return self.root / "opt-mailcfg"

    @property
    def sshd_log(self) -> Path:
        return self.ssh_dir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.ssh_dir / "ssh_host_ed25519_key"

    def sshd_pid(self) -> int | None:
        try:
            pid = int(self.sshd_pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None


class NetnsLab:
    """Namespace hosts for one session, with the runner's SSH key and known_hosts."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mcfg-lab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # non-root test users read their authorized keys below
        self.hosts: list[NetnsHost] = []
        self.identity_file = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        run_cmd(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mcfg-lab",
             "-f", str(self.identity_file)]
        )  # fmt: skip
        self.known_hosts.touch(mode=0o600)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir

    # -- lifecycle ----------------------------------------------------------------------------

    def add_host(self) -> NetnsHost:
        """Create a namespace host with a running sshd; its key goes into known_hosts."""
        with lab_lock():
            remove_stale_namespaces()
            ensure_bridge()
            index = self._claim_index()
            host = NetnsHost(index=index, root=self.workdir / f"host{index}")
            self.hosts.append(host)
            try:
                self._wire(host)
            except BaseException:
                self.remove_host(host)
                raise
        try:
            host.root.mkdir(parents=True, exist_ok=True)
            self.start_sshd(host)
            self.trust_host_key(host)
        except BaseException:
            self.remove_host(host)
            raise
        return host

    def _claim_index(self) -> int:
        existing = set(list_namespaces())
        for index in range(1, MAX_HOSTS + 1):
            name = f"{NS_PREFIX}{index}"
            if name in existing:
                continue
            if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode:
                continue
            (STATE_DIR / f"{name}.owner").write_text(f"{os.getpid()}\n")
            return index
        raise RuntimeError(f"no free namespace slot among {NS_PREFIX}1..{MAX_HOSTS}")

    def _wire(self, host: NetnsHost) -> None:
        ns = host.name
        run_cmd(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                 "netns", ns])  # fmt: skip
        run_cmd(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
        # The address may have belonged to an earlier host: forget its old MAC.
        run_cmd(["ip", "neigh", "flush", "to", host.address, "dev", BRIDGE], check=False)
        inside = ["ip", "-n", ns]
        run_cmd([*inside, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0"])
        run_cmd([*inside, "link", "set", "eth0", "up"])
        run_cmd([*inside, "link", "set", "lo", "up"])

    def start_sshd(self, host: NetnsHost) -> None:
        ssh_dir = host.ssh_dir
        ssh_dir.mkdir(parents=True, exist_ok=True)
        ssh_dir.chmod(0o755)
        if not host.host_key.exists():
            run_cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.host_key)])
        keys = ssh_dir / "authorized_keys.root"
        if not keys.exists():
            keys.write_text((self.identity_file.with_suffix(".pub")).read_text())
        config = ssh_dir / "sshd_config"
        config.write_text(
            f"ListenAddress {host.address}:{host.ssh_port}\n"
            f"HostKey {host.host_key}\n"
            f"PidFile {host.sshd_pid_file}\n"
            f"AuthorizedKeysFile {ssh_dir}/authorized_keys.%u\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The lab lives under /tmp (mode 1777), which StrictModes would reject.
            "StrictModes no\n"
            "MaxStartups 100:30:200\n"
            "MaxSessions 50\n"
            "UseDNS no\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
        )
        host.sshd_pid_file.unlink(missing_ok=True)
        host.state_dir.mkdir(parents=True, exist_ok=True)
        host.agent_home.mkdir(parents=True, exist_ok=True)
        Path(MAILCFG_STATE).mkdir(parents=True, exist_ok=True)  # the mount points
        Path(AGENT_HOME).mkdir(parents=True, exist_ok=True)
        # `ip netns exec` gives its child a private mount namespace (slave of ours): the bind
        # mount gives this host its own mailcfg state dir, seen by sshd and every session.
        start = (
            f"mount --bind {shlex.quote(str(host.state_dir))} {MAILCFG_STATE} && "
            f"mount --bind {shlex.quote(str(host.agent_home))} {AGENT_HOME} && "
            f"exec /usr/sbin/sshd -D -f {shlex.quote(str(config))} "
            f"-E {shlex.quote(str(host.sshd_log))}"
        )
        self.launch_sshd(host, start)

    def launch_sshd(self, host: NetnsHost, start: str) -> None:
        """Run the shell command `start` (which ends by exec'ing sshd) in the host's namespace
        and wait until sshd listens."""
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.name, "sh", "-c", start],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        sshd = host.sshd

        def ready() -> bool:
            if sshd.poll() is not None:
                log = host.sshd_log.read_text() if host.sshd_log.exists() else ""
                raise RuntimeError(f"sshd of {host.name} exited ({sshd.returncode}): {log}")
            return (host.address, host.ssh_port) in listening_ports(sshd.pid)

        wait_until(ready, f"sshd of {host.name} on {host.address}:{host.ssh_port}")

    def stop_sshd(self, host: NetnsHost) -> None:
        """Stop the listener and every connection it serves."""
        pid = host.sshd_pid()
        if pid is not None:
            for child in child_pids(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if host.sshd is not None:
            try:
                host.sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                host.sshd.kill()
                host.sshd.wait()
            host.sshd = None

    def trust_host_key(self, host: NetnsHost) -> None:
        public = host.host_key.with_suffix(".pub").read_text().split()
        with self.known_hosts.open("a") as f:
            f.write(f"{host.address} {public[0]} {public[1]}\n")

    def remove_host(self, host: NetnsHost) -> None:
        """Stop everything of the host (by PID, then anything left in its namespace), delete
        its namespace and veth."""
        self.stop_services(host)
        self.stop_sshd(host)
        with lab_lock():
            if host.name in list_namespaces():
                _kill_namespace_processes(host.name)
                run_cmd(["ip", "netns", "del", host.name], check=False)
            run_cmd(["ip", "link", "del", host.veth], check=False)
            (STATE_DIR / f"{host.name}.owner").unlink(missing_ok=True)
            remove_bridge_if_unused()
        if host in self.hosts:
            self.hosts.remove(host)

    def close(self) -> None:
        for host in list(self.hosts):
            with contextlib.suppress(Exception):
                self.remove_host(host)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers for tests ---------------------------------------------------------------------

    def enter(self, host: NetnsHost) -> list[str]:
        """argv prefix that runs a program inside the host: its network namespace and the
        mount namespace of its sshd (so it sees the host's own /var/lib/mailcfg)."""
        pid = host.sshd_pid()
        if pid is None:
            raise RuntimeError(f"{host.name}: sshd is not running; cannot enter the host")
        return ["nsenter", f"--target={pid}", "--net", "--mount"]

    def run_in_host(
        self, host: NetnsHost, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the host (as root, on the shared disk)."""
        proc = subprocess.run(
            [*self.enter(host), "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{host.name}: {command!r} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def ssh_connections(self, host: NetnsHost) -> list[int]:
        """PIDs of the sshd processes serving connections (children of the listener)."""
        pid = host.sshd_pid()
        return child_pids(pid) if pid is not None else []

    def kill_ssh_connections(self, host: NetnsHost) -> int:
        """Fault injection: kill every sshd child serving a connection (the listener stays up,
        so the next connection works). Returns how many were killed."""
        children = self.ssh_connections(host)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not any(process_running(pid) for pid in children),
            f"killed sshd connections of {host.name} to exit",
        )
        return len(children)

    def wait_ssh_connections(self, host: NetnsHost, count: int) -> None:
        """Wait until `count` connections are served (the server notices a close
        asynchronously)."""
        wait_until(
            lambda: len(self.ssh_connections(host)) == count,
            f"{count} ssh connection(s) on {host.name}",
        )

    def stop_host(self, host: NetnsHost) -> None:
        """ "Host down": its link goes down, so packets to it vanish (connections time out);
        `start_host` brings it back."""
        run_cmd(["ip", "-n", host.name, "link", "set", "eth0", "down"])

    def start_host(self, host: NetnsHost) -> None:
        """Bring the link back and return once the runner reaches the host's sshd again (the
        bridge port and neighbour entry take a moment, longer on a loaded machine)."""
        run_cmd(["ip", "-n", host.name, "link", "set", "eth0", "up"])

        def reachable() -> bool:
            try:
                socket.create_connection((host.address, host.ssh_port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(reachable, f"{host.name} reachable again")

    def add_user(self, host: NetnsHost, user: str) -> None:
        """Let the lab's key log in as `user` on this host (the user must exist)."""
        keys = host.ssh_dir / f"authorized_keys.{user}"
        keys.write_text(self.identity_file.with_suffix(".pub").read_text())
        keys.chmod(0o644)

    def start_service(self, host: NetnsHost, argv: Sequence[str], log: Path) -> int:
        """Start a daemon inside the host (stdout/stderr to `log`, never a pipe: Dovecot keeps
        its start-up descriptors) and remember its PID for cleanup."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*self.enter(host), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host.services.append(proc.pid)
        return proc.pid

    def bind_mount(self, host: NetnsHost, source: Path, target: str) -> None:
        """Bind-mount `source` over `target` in the host's mount namespace only (the one its
        sshd and services run in): e.g. programs the host has and this machine has not on
        its PATH. Gone with the namespace; the runner's own view never changes."""
        self.run_in_host(host, f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")

    def track_pid(self, host: NetnsHost, pid: int) -> None:
        """Remember a PID started in the host by other means (a daemon's pid file)."""
        host.services.append(pid)

    def stop_services(self, host: NetnsHost) -> None:
        for pid in reversed(host.services):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pid in host.services:
            while pid_alive(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        host.services.clear()
