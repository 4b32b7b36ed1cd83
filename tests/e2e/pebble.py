"""Debian's `pebble` ACME test server on the lab bridge for the ACME tests: a CA the test
makes (pebble's HTTPS certificate is signed by it, so a host trusts pebble through that CA
only), and pebble itself, validating http-01 on `http_port` of the names the given DNS server
answers. PEBBLE_VA_NOSLEEP=1 skips pebble's random validation delay."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netns import RUNNER_ADDRESS, wait_until


@dataclass(frozen=True)
class PebblePorts:
    acme: int  # the ACME directory (HTTPS)
    management: int
    http_01: int  # where pebble fetches http-01 challenges from the host
    tls_alpn: int

    @property
    def directory(self) -> str:
        return f"https://{RUNNER_ADDRESS}:{self.acme}/dir"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pebble_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and, signed by it, pebble's HTTPS certificate for the runner's bridge address."""
    directory.mkdir(parents=True, exist_ok=True)
    names = ("ca.key", "ca.pem", "pebble.key", "pebble.csr", "pebble.pem")
    ca_key, ca, key, csr, cert = (directory / n for n in names)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(ca), "-days", "2", "-subj", "/CN=mailcfg test ACME CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=pebble")  # fmt: skip
    ext = directory / "san.ext"
    ext.write_text(f"subjectAltName = IP:{RUNNER_ADDRESS}\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    for path in directory.iterdir():
        path.chmod(0o644)
    return ca, cert, key


@contextmanager
def running_pebble(directory: Path, ports: PebblePorts, dns: str) -> Iterator[Path]:
    """pebble until the block ends, asking the DNS server `dns` ("ip:port"); yields the CA
    that signed its HTTPS certificate."""
    ca, cert, key = make_pebble_tls(directory)
    config = directory / "config.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"{RUNNER_ADDRESS}:{ports.acme}",
        "managementListenAddress": f"{RUNNER_ADDRESS}:{ports.management}",
        "certificate": str(cert), "privateKey": str(key),
        "httpPort": ports.http_01, "tlsPort": ports.tls_alpn,
        "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}))  # fmt: skip
    with (directory / "pebble.log").open("wb") as log:
        pebble = subprocess.Popen(
            ["pebble", "-config", str(config), "-dnsserver", dns],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        )  # fmt: skip
        try:
            wait_until(
                lambda: f":{ports.acme:X} " in Path("/proc/net/tcp").read_text(),
                "pebble listening",
            )
            yield ca
        finally:
            pebble.terminate()
            pebble.wait(timeout=10)
