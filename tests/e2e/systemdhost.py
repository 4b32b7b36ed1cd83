"""Debian hosts booted with systemd as PID 1, for the end-to-end tests of what only systemd does
(units enabled and started by an apply, the agent restarted onto a new install, rspamd and
postsrsd reloaded or restarted by their roles).

The root is a minimal Debian 12 with openssh-server, python3, systemd and dbus (mmdebstrap from
the Debian archive, cached a week like `barehost`'s). Each host boots it in its network
namespace inside new PID, mount, UTS, IPC and cgroup namespaces, as a container manager would:
a cgroup of its own on this machine (`mcfg-<namespace>` in each hierarchy systemd uses,
removed afterwards), cgroup file systems mounted fresh inside (so systemd sees
only its own tree), a private /dev with the few device nodes a service needs (never this
machine's terminals: the getty units are masked), /proc of its PID namespace, its own /run
and /tmp. systemd starts the root's own sshd (the lab's host key and authorized keys placed in
the root), and package scripts start daemons as on a real host: there is no `policy-rc.d`.

Everything the host runs dies with its PID 1, which `stop_sshd` kills (then its cgroups are
removed); `enter` joins its namespaces and root, so a test's `systemctl` talks to that systemd.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from barehost import BareHostLab, debian_tarball
from netns import NetnsHost, child_pids, listening_ports, wait_until

# The hierarchies systemd places its units in (by /proc/self/cgroup's name for each) and where
# this machine mounts them.
CGROUP_MOUNTS = {
    "name=systemd": "/sys/fs/cgroup/systemd",
    "": "/sys/fs/cgroup/unified",
    "memory": "/sys/fs/cgroup/memory",
    "devices": "/sys/fs/cgroup/devices",
    "pids": "/sys/fs/cgroup/pids",
}
KEYS_DIR = "/etc/ssh/mcfg"  # the lab's host key and authorized keys, inside the root


def systemd_tarball() -> Path:
    """Minbase with openssh-server, python3, systemd (as init) and dbus."""
    return debian_tarball(
        "systemd-sshd", "--include=openssh-server,python3,systemd,systemd-sysv,dbus"
    )


def boot_script(namespace: str, root: Path, cgroups: list[Path]) -> str:
    """Shell that joins the host's own cgroups (before `ip netns exec`, which mounts a /sys
    without them), then execs systemd as PID 1 of new namespaces in the network namespace,
    with the root's mounts made inside them."""
    r = shlex.quote(str(root))
    join = " && ".join(
        f"mkdir -p {shlex.quote(str(c))} && echo $$ > {shlex.quote(str(c / 'cgroup.procs'))}"
        for c in cgroups
    )
    inside = " && ".join(
        [
            "mount --make-rprivate /",
            f"mount --bind {r} {r}",
            f"mount -t proc proc {r}/proc",
            f"mount -t sysfs -o ro sysfs {r}/sys",
            f"mount -t tmpfs -o mode=755 tmpfs {r}/sys/fs/cgroup",
            f"mkdir {r}/sys/fs/cgroup/systemd {r}/sys/fs/cgroup/unified",
            f"mount -t cgroup -o none,name=systemd cgroup {r}/sys/fs/cgroup/systemd",
            f"mount -t cgroup2 cgroup2 {r}/sys/fs/cgroup/unified",
            f"mount -t tmpfs -o mode=755 tmpfs {r}/dev",
            f"cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty {r}/dev/",
            f"mkdir {r}/dev/pts {r}/dev/shm",
            f"mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts {r}/dev/pts",
            f"ln -s pts/ptmx {r}/dev/ptmx",
            f"mount -t tmpfs -o mode=1777 tmpfs {r}/dev/shm",
            f"mount -t tmpfs -o mode=755 tmpfs {r}/run",
            f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp",
            f"exec chroot {r} /usr/bin/env -i container=mcfg-test /lib/systemd/systemd",
        ]
    )
    unshare = "unshare --pid --fork --mount --uts --ipc --cgroup --kill-child"
    netns = f"ip netns exec {shlex.quote(namespace)}"
    return f"{join} && exec {netns} {unshare} sh -c {shlex.quote(inside)}"


def host_cgroups(namespace: str) -> list[Path]:
    """One new cgroup per hierarchy systemd uses, below the one this process is in."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mount = CGROUP_MOUNTS.get(controllers)
        if mount is not None and Path(mount).is_dir():
            found.append(Path(mount + path.rstrip("/")) / f"mcfg-{namespace}")
    return found


class SystemdHostLab(BareHostLab):
    """A `BareHostLab` whose hosts boot systemd; their sshd is the root's own `ssh.service`."""

    def __init__(self, tarball: Path, proxy: str, workdir: Path | None = None) -> None:
        super().__init__(tarball, proxy, workdir)
        self.cgroups: dict[str, list[Path]] = {}

    def prepare_root(self, host: NetnsHost) -> None:
        root = self.unpack_root(host)
        units = root / "etc/systemd/system"
        for unit in ("getty.target", "console-getty.service", "systemd-logind.service"):
            with contextlib.suppress(FileExistsError):
                (units / unit).symlink_to("/dev/null")
        (root / "etc/hostname").write_text(f"{host.name}\n")
        # As any installed system has it (mmdebstrap writes none): rspamd's stock config binds
        # to "localhost", which would otherwise go to the DNS and fail.
        (root / "etc/hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
            f"{host.address} {host.name}\n"
        )

    def start_sshd(self, host: NetnsHost) -> None:
        root = self.prepare_host(host)
        keys = root / KEYS_DIR.lstrip("/")
        keys.mkdir(mode=0o700, exist_ok=True)
        (keys / "ssh_host_ed25519_key").write_bytes(host.host_key.read_bytes())
        (keys / "ssh_host_ed25519_key").chmod(0o600)
        (keys / "authorized_keys.root").write_text(
            self.identity_file.with_suffix(".pub").read_text()
        )
        (root / "etc/ssh/sshd_config").write_text(
            f"ListenAddress {host.address}:{host.ssh_port}\n"
            f"HostKey {KEYS_DIR}/ssh_host_ed25519_key\n"
            f"AuthorizedKeysFile {KEYS_DIR}/authorized_keys.%u\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "MaxStartups 100:30:200\n"
            "UseDNS no\n"
            "Subsystem sftp internal-sftp\n"
        )
        self.cgroups[host.name] = cgroups = host_cgroups(host.name)
        log = (host.root / "boot.log").open("ab")
        with log:
            host.sshd = subprocess.Popen(
                ["sh", "-c", boot_script(host.name, root, cgroups)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        boot = host.sshd

        def ready() -> bool:
            if boot.poll() is not None:
                raise RuntimeError(
                    f"systemd of {host.name} exited ({boot.returncode}): "
                    + (host.root / "boot.log").read_text(errors="replace")[-3000:]
                )
            return (host.address, host.ssh_port) in listening_ports(boot.pid)

        wait_until(ready, f"systemd of {host.name} to start sshd on {host.address}", timeout=120)

    def init_pid(self, host: NetnsHost) -> int:
        """The host's PID 1, as this machine numbers it."""
        if host.sshd is None or host.sshd.poll() is not None:
            raise RuntimeError(f"{host.name} is not booted")
        children = child_pids(host.sshd.pid)
        if not children:
            raise RuntimeError(f"{host.name}: no PID 1 under its unshare")
        return children[0]

    def enter(self, host: NetnsHost) -> list[str]:
        """argv prefix that runs a program in the host: all its namespaces and its root."""
        pid = self.init_pid(host)
        return [
            "nsenter", f"--target={pid}", "--net", "--mount", "--pid", "--uts", "--ipc",
            "--cgroup", "--root", "--wd=/",
        ]  # fmt: skip

    def stop_sshd(self, host: NetnsHost) -> None:
        """Kill the host's PID 1 (and with it everything in the host), then remove its
        cgroups on this machine."""
        boot = host.sshd
        if boot is None:
            return
        with contextlib.suppress(RuntimeError, ProcessLookupError):
            os.kill(self.init_pid(host), signal.SIGKILL)
        try:
            boot.wait(timeout=30)  # unshare reaps its child, then exits
        except subprocess.TimeoutExpired:
            boot.kill()
            boot.wait()
        host.sshd = None
        for cgroup in self.cgroups.pop(host.name, []):
            remove_cgroup(cgroup)


def remove_cgroup(top: Path) -> None:
    """Remove `top` and the cgroups systemd made below it, deepest first, once their
    processes are gone (the kernel frees a killed process's cgroup membership shortly)."""
    if not top.is_dir():
        return
    deadline = time.monotonic() + 10
    while True:
        left = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        busy = False
        for cgroup in [*left, top]:
            try:
                cgroup.rmdir()
            except OSError:
                busy = True
        if not busy or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def unit_main_pid(lab: SystemdHostLab, host: NetnsHost, unit: str) -> int:
    """The unit's main PID as the host numbers it (0 when it has none)."""
    out = lab.run_in_host(host, f"systemctl show -P MainPID {shlex.quote(unit)}").stdout
    return int(out.strip() or 0)


def wait_active(lab: SystemdHostLab, host: NetnsHost, units: list[str], timeout: float) -> None:
    """Wait until every unit is active; the error shows their status."""
    names = " ".join(shlex.quote(u) for u in units)

    def active() -> bool:
        done = lab.run_in_host(host, f"systemctl is-active {names}", check=False)
        return done.returncode == 0

    try:
        wait_until(active, f"{names} active", timeout=timeout)
    except RuntimeError as exc:
        status = lab.run_in_host(
            host, f"systemctl status --no-pager {names} 2>&1 | tail -n 60", check=False
        )
        raise AssertionError(f"{exc}\n{status.stdout}") from exc
