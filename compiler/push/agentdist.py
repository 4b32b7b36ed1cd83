"""The agent as a host installs it without network access: this project's wheel (the agent's
code, `runtime/` and `schemas/`) and a wheelhouse of its runtime dependencies for the host's
Python version and architecture (both learned at observe), made on the controller.

The agent's wheel is built here, byte for byte reproducible (sorted members, fixed
timestamps), so its sha256 names it: the agent id `<version>-<digest>` is the same on every
controller with the same sources, and a host that has that id installed needs nothing. The
dependencies are the `agent` extra of pyproject.toml, each pinned to the version this
controller runs where it has one (the host runs what the controller was tested with);
`pip download --only-binary=:all:` fetches them for the host's `cp3X` and `manylinux_*_<arch>`,
after a pure-Python package published only as source (pyspf, pyinotify) is made a
`py3-none-any` wheel here (`pip wheel`). The result is cached in the user's cache directory
(`$XDG_CACHE_HOME/mailcfg/wheelhouse/<agent id>-cp3X-<arch>/`, like the other caches: owned by
the user, 0700), so an offline controller with the cache still works, and one without it gets
a clear error.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from compiler.cache.cachedir import CacheError, find_cache_root, prepare_cache_dir

WHEELHOUSE_SUBDIRECTORY = "wheelhouse"
MANIFEST = "wheelhouse.json"
PACKAGES = ("runtime", "schemas")  # what the agent's wheel holds
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_PIP_TIMEOUT = 600.0
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class AgentDistError(Exception):
    """The agent's wheelhouse cannot be made or found; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    """Every wheel a host needs to install agent `agent_id` (its own wheel first)."""

    agent_id: str
    version: str
    python: str  # the host's python3, "3.11.2"
    machine: str  # "x86_64"
    directory: Path
    wheels: tuple[str, ...]  # file names in `directory`

    def read(self) -> dict[str, bytes]:
        return {name: (self.directory / name).read_bytes() for name in self.wheels}


def source_root() -> Path:
    """The checkout this controller runs from (its pyproject.toml and the agent's packages)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not all((root / p).is_dir() for p in PACKAGES):
        raise AgentDistError(
            f"{root}: not this project's source tree (pyproject.toml, runtime/, schemas/): "
            "the agent's wheel is built from the controller's own sources"
        )
    return root


def read_project(root: Path) -> tuple[str, list[str]]:
    """The project's version and its `agent` extra."""
    with (root / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    return str(project["version"]), list(project["optional-dependencies"]["agent"])


def build_agent_wheel(root: Path) -> tuple[str, bytes]:
    """This project's agent wheel (`mailcfg-<version>-py3-none-any.whl`): the modules of
    `runtime/` and `schemas/`, the `mailcfg-agent` command, the `agent` extra as its
    requirements. The same sources give the same bytes."""
    version, requirements = read_project(root)
    dist_info = f"mailcfg-{version}.dist-info"
    members: dict[str, bytes] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                members[path.relative_to(root).as_posix()] = path.read_bytes()
    metadata = [
        "Metadata-Version: 2.1",
        "Name: mailcfg",
        f"Version: {version}",
        "Summary: mailcfg's agent (Postfix policy service and mail-log statistics)",
        "Requires-Python: >=3.11",
        *(f"Requires-Dist: {r}" for r in requirements),
    ]
    members[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    members[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: mailcfg\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members[f"{dist_info}/entry_points.txt"] = (
        b"[console_scripts]\nmailcfg-agent = runtime.cli:main\n"
    )
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([name, f"sha256={digest}", len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    members[f"{dist_info}/RECORD"] = record.getvalue().encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return f"mailcfg-{version}-py3-none-any.whl", buf.getvalue()


def agent_id(root: Path) -> str:
    """`<version>-<first 12 hex of the agent wheel's sha256>`."""
    name, data = build_agent_wheel(root)
    version = name.split("-")[1]
    return f"{version}-{hashlib.sha256(data).hexdigest()[:12]}"


@functools.cache
def controller_agent() -> tuple[str, str]:
    """(agent id, version) of this controller's agent; built once per process (the sources
    a process runs from do not change under it)."""
    name, data = build_agent_wheel(source_root())
    version = name.split("-")[1]
    return f"{version}-{hashlib.sha256(data).hexdigest()[:12]}", version


def pinned_requirements(requirements: list[str]) -> list[str]:
    """Each requirement pinned to the version this controller has installed (its marker
    kept); as written where it has none."""
    out = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        name = _REQUIREMENT_NAME.match(spec.strip())
        if name is None:
            raise AgentDistError(f"pyproject.toml: agent extra: cannot read {requirement!r}")
        try:
            pinned = f"{name.group(0)}=={importlib.metadata.version(name.group(0))}"
        except importlib.metadata.PackageNotFoundError:
            pinned = spec.strip()
        out.append(f"{pinned}; {marker.strip()}" if marker.strip() else pinned)
    return out


def platform_tags(machine: str) -> list[str]:
    """pip's `--platform` values for a Debian/Ubuntu host (glibc ≥ 2.36 on every supported
    release) of architecture `machine`."""
    arch = _MACHINES.get(machine)
    if arch is None:
        raise AgentDistError(f"no agent wheels for the architecture {machine!r}")
    return [f"manylinux_2_{minor}_{arch}" for minor in (36, 35, 34, 28, 27, 17)] + [
        f"manylinux2014_{arch}"
    ]


def wheelhouse_dir(cache_root: Path | None, ident: str, python: str, machine: str) -> Path:
    root = cache_root if cache_root is not None else find_cache_root()
    return root / WHEELHOUSE_SUBDIRECTORY / f"{ident}-py{python}-{machine}"


def make_wheelhouse(python: str, machine: str, cache_root: Path | None = None) -> Wheelhouse:
    """The wheelhouse of this controller's agent for a host running Python `python`
    ("3.11.2": a dependency's marker may name the micro version) on `machine` ("x86_64"):
    from the cache, else made (and cached). Raises AgentDistError."""
    if not re.fullmatch(r"3\.\d{1,2}\.\d{1,3}", python):
        raise AgentDistError(f"the host's python3 is {python!r}: the agent needs Python 3")
    root = source_root()
    wheel_name, wheel = build_agent_wheel(root)
    version = wheel_name.split("-")[1]
    ident = f"{version}-{hashlib.sha256(wheel).hexdigest()[:12]}"
    directory = wheelhouse_dir(cache_root, ident, python, machine)
    cached = _read_manifest(directory)
    if cached is not None:
        return Wheelhouse(ident, version, python, machine, directory, cached)
    try:
        prepare_cache_dir(directory.parent, tighten=True)
    except CacheError as exc:
        raise AgentDistError(f"no cache for the agent's wheelhouse: {exc}") from exc
    staging = Path(tempfile.mkdtemp(prefix=".making-", dir=directory.parent))
    try:
        (staging / wheel_name).write_bytes(wheel)
        try:
            _download(read_project(root)[1], python, machine, staging)
        except AgentDistError as exc:
            raise AgentDistError(
                f"cannot make the agent's wheelhouse for Python {python} on {machine} (is this "
                f"controller offline?), and none is cached in {directory}: {exc}"
            ) from None
        names = sorted(p.name for p in staging.glob("*.whl") if p.name != wheel_name)
        wheels = (wheel_name, *names)
        (staging / MANIFEST).write_text(json.dumps({"agent_id": ident, "wheels": wheels}))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Wheelhouse(ident, version, python, machine, directory, wheels)


def _read_manifest(directory: Path) -> tuple[str, ...] | None:
    """The wheels of a complete cached wheelhouse (its manifest is written last)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        doc = json.loads((directory / MANIFEST).read_text())
        wheels = tuple(str(w) for w in doc["wheels"])
        if all((directory / w).is_file() for w in wheels):
            return wheels
    return None


def _download(requirements: list[str], python: str, machine: str, dest: Path) -> None:
    """The dependencies' wheels for the host into `dest`: binary wheels for its platform;
    a pure-Python package published only as source is made a wheel here first."""
    pinned = pinned_requirements(requirements)
    local = dest / ".built"
    local.mkdir()
    major_minor = ".".join(python.split(".")[:2])
    abi = f"cp{major_minor.replace('.', '')}"
    platform_args = [a for tag in platform_tags(machine) for a in ("--platform", tag)]
    base = [
        *("download", "--only-binary=:all:", "--python-version", major_minor),
        *("--implementation", "cp", "--abi", abi, *platform_args),
        *("--find-links", str(local), "--dest", str(dest)),
    ]
    wanted = pinned
    for _ in range(4 * len(pinned) + 4):
        proc = _pip([*base, *wanted])
        if proc.returncode == 0:
            # pip evaluates markers for this interpreter, not the host's: what the host's
            # Python needs besides (redis → async-timeout below 3.11.3) is fetched next.
            wanted = missing_requirements(dest, python, machine)
            if not wanted:
                shutil.rmtree(local)
                return
            continue
        missing = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)", proc.stderr)
        if missing is None:
            break
        _build_pure_wheel(missing.group(1), pinned, local)
    raise AgentDistError(f"pip download failed: {_last_lines(proc.stderr)}")


def missing_requirements(dest: Path, python: str, machine: str) -> list[str]:
    """The requirements of the wheels in `dest`, as the host's Python (`python`, `machine`)
    evaluates their markers, that no wheel in `dest` provides."""
    # Imported here: packaging costs every command ~20 ms at start (fleet imports this module).
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    environment = {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python,
        "platform_machine": machine,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    have = {canonicalize_name(p.name.split("-")[0]) for p in dest.glob("*.whl")}
    missing: dict[str, str] = {}
    for wheel in sorted(dest.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = archive.read(name).decode("utf-8", errors="replace")
        for line in metadata.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            try:
                requirement = Requirement(line.split(":", 1)[1].strip())
            except InvalidRequirement:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            key = canonicalize_name(requirement.name)
            if key not in have:
                missing[key] = f"{requirement.name}{requirement.specifier}"
    return sorted(missing.values())


def _build_pure_wheel(name: str, pinned: list[str], dest: Path) -> None:
    """`name` (an sdist-only dependency) as a wheel; only a pure-Python one fits every host."""
    requirement = next(
        (r.split(";")[0].strip() for r in pinned if r.lower().startswith(name.lower())), name
    )
    proc = _pip(["wheel", "--no-deps", "--wheel-dir", str(dest), requirement])
    built = [
        p for p in dest.glob("*.whl") if p.name.lower().startswith(name.lower().replace("-", "_"))
    ]
    if proc.returncode != 0 or not built:
        raise AgentDistError(
            f"cannot make a wheel of {requirement} for the agent's wheelhouse: "
            f"{_last_lines(proc.stderr)}"
        )
    for wheel in built:
        if not wheel.name.endswith("-none-any.whl"):
            wheel.unlink()
            raise AgentDistError(
                f"{requirement} has no binary wheel for the host and is not pure Python"
            )


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=_PIP_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _last_lines(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if "is ignored" not in line]
    return " / ".join(lines[-3:]) or "(no output)"
