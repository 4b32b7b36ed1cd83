"""Bare Debian hosts for end-to-end tests: a minimal Debian 12 root (mmdebstrap from the Debian
archive: minbase with openssh-server and python3, what a cloud image has, cached as a tarball
for a week) unpacked per host and running only its sshd, chrooted, in a network namespace of
`netns.NetnsLab`; and `AptProxy`, the one route from such a host to the Debian archive.

The host's sshd runs in the private mount namespace `ip netns exec` gives it, with /dev, /proc
and /sys mounted into the root there (gone with the namespace) and the lab's per-host sshd
directory bound at /mcfg-sshd (its host key, authorized keys, pid file and log, read by the
lab from outside). `enter` joins the namespaces and the root of that sshd, so whatever a test
starts in the host sees the host's files only. A `policy-rc.d` keeps package scripts from
starting daemons, as container images do: there is no init in the root, so the test starts
Postfix, Dovecot and the agent itself, with the command lines and users their units declare.

`AptProxy` is a forwarding HTTP proxy on the lab bridge for the host's apt (configured in the
root by the test): it forwards GET requests for the Debian archive's hosts only, so the host
reaches nothing else.
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from netns import RUNNER_ADDRESS, NetnsHost, NetnsLab, run_cmd

CACHE = Path("/var/cache/mailcfg-tests")
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
TARBALL_MAX_AGE = 7 * 24 * 3600.0
ARCHIVE_HOSTS = frozenset({"deb.debian.org", "security.debian.org"})
SSHD_DIR = "/mcfg-sshd"  # where the host sees the lab's sshd directory


def ensure_mmdebstrap() -> None:
    if shutil.which("mmdebstrap"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mmdebstrap"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def debian_tarball(name: str, *options: str) -> Path:
    """Debian 12 minbase (with `options` for mmdebstrap) as the tarball `name`, made anew
    when missing or older than a week."""
    tarball = CACHE / f"debian-{SUITE}-{name}.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime < TARBALL_MAX_AGE:
        return tarball
    ensure_mmdebstrap()
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f"debian-{SUITE}-{name}.{os.getpid()}.partial.tar"
    try:
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--quiet", *options, SUITE, str(partial), MIRROR],
            check=True, timeout=900,
        )  # fmt: skip
        os.replace(partial, tarball)
    finally:
        partial.unlink(missing_ok=True)
    return tarball


def bare_tarball() -> Path:
    """What a cloud image has: minbase, openssh-server and python3."""
    return debian_tarball("bare-sshd", "--include=openssh-server,python3")


class BareHostLab(NetnsLab):
    """A `NetnsLab` whose hosts are bare Debian roots (`rootfs(host)`), each running its own
    sshd chrooted into it."""

    def __init__(self, tarball: Path, proxy: str, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.tarball = tarball
        self.proxy = proxy

    @staticmethod
    def rootfs(host: NetnsHost) -> Path:
        return host.root / "rootfs"

    def unpack_root(self, host: NetnsHost) -> Path:
        """The tarball unpacked as the host's root, its apt sent through the proxy."""
        root = self.rootfs(host)
        root.mkdir(parents=True)
        subprocess.run(
            ["tar", "-x", "--numeric-owner", "-f", str(self.tarball), "-C", str(root)], check=True
        )
        (root / "etc/apt/apt.conf.d/00mcfg-proxy").write_text(
            f'Acquire::http::Proxy "{self.proxy}";\n'
        )
        return root

    def prepare_root(self, host: NetnsHost) -> None:
        root = self.unpack_root(host)
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# No init in this root: the test starts daemons.\nexit 101\n")
        policy.chmod(0o755)
        (root / SSHD_DIR.lstrip("/")).mkdir()
        (root / "run/sshd").mkdir(parents=True, exist_ok=True)

    def prepare_host(self, host: NetnsHost) -> Path:
        """The host's root (unpacked and prepared the first time) and its SSH directory with
        the host key, as each lab's `start_sshd` begins."""
        root = self.rootfs(host)
        if not root.exists():
            self.prepare_root(host)
        host.ssh_dir.mkdir(parents=True, exist_ok=True)
        host.ssh_dir.chmod(0o755)
        if not host.host_key.exists():
            run_cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.host_key)])
        return root

    def start_sshd(self, host: NetnsHost) -> None:
        root = self.prepare_host(host)
        ssh_dir = host.ssh_dir
        (ssh_dir / "authorized_keys.root").write_text(
            self.identity_file.with_suffix(".pub").read_text()
        )
        inside = SSHD_DIR
        (ssh_dir / "sshd_config").write_text(
            f"ListenAddress {host.address}:{host.ssh_port}\n"
            f"HostKey {inside}/{host.host_key.name}\n"
            f"PidFile {inside}/{host.sshd_pid_file.name}\n"
            f"AuthorizedKeysFile {inside}/authorized_keys.%u\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "MaxStartups 100:30:200\n"
            "UseDNS no\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
        )
        host.sshd_pid_file.unlink(missing_ok=True)
        r = shlex.quote(str(root))
        start = (
            f"mount --rbind /dev {r}/dev && mount -t proc proc {r}/proc && "
            f"mount -t sysfs sysfs {r}/sys && "
            f"mount --bind {shlex.quote(str(ssh_dir))} {r}{inside} && "
            f"exec chroot {r} /usr/sbin/sshd -D -f {inside}/sshd_config -E {inside}/sshd.log"
        )
        self.launch_sshd(host, start)

    def enter(self, host: NetnsHost) -> list[str]:
        """argv prefix that runs a program in the host: its network and mount namespaces and
        its root (the chroot its sshd runs in)."""
        pid = host.sshd_pid()
        if pid is None:
            raise RuntimeError(f"{host.name}: sshd is not running; cannot enter the host")
        return ["nsenter", f"--target={pid}", "--net", "--mount", "--root", "--wd=/"]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counts: dict[str, int]

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.scheme != "http" or url.hostname not in ARCHIVE_HOSTS:
            self.send_error(403, "only the Debian archive")
            return
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        try:
            path = url.path + (f"?{url.query}" if url.query else "")
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() in ("range", "if-modified-since", "accept")
            }
            upstream.request("GET", path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
        except OSError as exc:
            self.send_error(502, f"archive unreachable: {exc}")
            return
        finally:
            upstream.close()
        self.counts["bytes"] = self.counts.get("bytes", 0) + len(body)
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() in ("content-type", "last-modified", "etag", "content-range"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def apt_proxy(port: int) -> Iterator[dict[str, int]]:
    """The proxy on the lab bridge at `port` until the block ends; yields its byte counter."""
    counts: dict[str, int] = {}
    handler = type("Handler", (_ProxyHandler,), {"counts": counts})
    server = ThreadingHTTPServer((RUNNER_ADDRESS, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def newer_checkout(repo: Path, dest: Path) -> str:
    """A copy of the controller in `repo` whose pyproject says another version; its version
    (an agent upgrade as the next controller release makes it)."""
    for part in ("compiler", "runtime", "schemas", "roles"):
        shutil.copytree(repo / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    project = (repo / "pyproject.toml").read_text()
    line = next(x for x in project.splitlines() if x.startswith("version = "))
    version = line.split('"')[1] + ".post1"
    (dest / "pyproject.toml").write_text(project.replace(line, f'version = "{version}"', 1))
    return version


def ssh_host(lab: NetnsLab, host: NetnsHost, mail_name: str, domain: str) -> dict[str, object]:
    """An inventory's entry for `host` over the lab's SSH (roles postfix, dovecot, agent)."""
    return {
        "address": host.address,
        "hostname": mail_name,
        "transport": "ssh",
        "ssh": {
            "identity_file": str(lab.identity_file),
            "known_hosts": str(lab.known_hosts),
            "connect_timeout": 5,
            "command_timeout": 1800,
        },
        "roles": ["postfix", "dovecot", "agent"],
        "domains": [domain],
    }


def maildir_messages(root: Path, address: str) -> list[bytes]:
    """The messages delivered to `address`'s maildir in the host's root."""
    local, domain = address.split("@")
    base = root / "var/vmail" / domain / local / "Maildir"
    found = [p for sub in ("new", "cur") if (base / sub).is_dir() for p in (base / sub).iterdir()]
    return [p.read_bytes() for p in found]


def run_mailcfg(
    inventory: Path, workdir: Path, *args: str, source: Path
) -> subprocess.CompletedProcess[str]:
    """`mailcfg COMMAND INVENTORY ARGS` run from the checkout `source`, its cache in
    `workdir`."""
    return subprocess.run(
        [sys.executable, "-m", "compiler", args[0], str(inventory),
         "--cache", str(workdir / "cache"), *args[1:]],
        capture_output=True, text=True, cwd=workdir, timeout=2000, check=False,
        env={**os.environ, "PYTHONPATH": str(source)},
    )  # fmt: skip
