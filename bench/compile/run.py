"""Compile benchmark: cold and warm `mailcfg render` of a large inventory, next to raw parsers.

Generates (in a temp dir) 1,000 domains / 50,000 accounts / 20,000 redirects, then measures in
one run and prints a Markdown table:

- `mailcfg render` (the real CLI, a fresh process each time): cold (empty cache; the output
  directory holds the previous render, as when re-rendering a checkout) and warm after editing
  one domain file; targets ≤ 3 s and ≤ 1 s; best and median wall time of
  `--repeat` runs, and the median CPU time (user + sys) of the process, which varies less
  than wall time on a shared machine;
- `load_inventory` alone, cold and warm, in-process;
- plain ruamel.yaml (round-trip and safe) on the same 1,001 files, and on the single-file
  variant (all 50,000 accounts in one YAML file) next to the rapidyaml fast path.

    python bench/compile/run.py [--keep DIR] [--repeat 3]

Timings are wall-clock and depend on the machine's load: run it on a quiet machine, by hand.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import generate

from compiler.load.inventory import LoadStats, load_inventory
from compiler.load.yamlload import parse_yaml


def best_of(
    repeat: int, fn: Callable[[], object], before: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_runs(
    repeat: int, fn: Callable[[], object], before: Callable[[], object]
) -> tuple[float, float, float]:
    """(best wall, median wall, median CPU) of `repeat` runs of a CLI subprocess."""
    walls, cpus = [], []
    for _ in range(repeat):
        before()
        cpu = _children_cpu()
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    return min(walls), statistics.median(walls), statistics.median(cpus)


def cli_environment(base: Path) -> dict[str, str]:
    """The CLI's environment: bytecode cached (under the bench directory, not the source
    tree), as an installed mailcfg has it, even when the caller sets
    PYTHONDONTWRITEBYTECODE (compiling mailcfg's own modules would add ~40 ms per run)."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(base / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def mailcfg_render(inv: Path, out: Path, cache: Path, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "compiler.cli", "render", str(inv), "--out", str(out)]
    cmd += ["--cache", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"mailcfg render failed:\n{done.stderr[-3000:]}")


def touch_one_domain(inv: Path, n: int) -> None:
    """Edit one domain file (a new account), as an admin's commit would. The account name
    also counts earlier edits, so a kept inventory (--keep) can be measured again."""
    f = inv / "domains" / "d0500.bench.test.yml"
    text = f.read_text()
    marker = "accounts:\n"
    account = (
        f"  - name: bench{n}-{text.count('  - name: bench')}\n"
        '    password: "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"\n'
    )
    f.write_text(text.replace(marker, marker + account, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="generate into DIR and keep it")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for each figure")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="mailcfg-bench-"))
    inv = base / "inv"
    if not (inv / "mailcfg.yml").exists():
        generate(inv)
    big = base / "inv-big" / "accounts.yml"
    files = [inv / "mailcfg.yml", *sorted((inv / "domains").glob("*.yml"))]
    size = sum(f.stat().st_size for f in files)
    rows: list[tuple[str, float, str]] = []
    r = args.repeat
    cache = base / "cache"
    out = base / "out"
    edits = iter(range(10**6))

    env = cli_environment(base)

    def fresh_cache() -> None:
        shutil.rmtree(cache, ignore_errors=True)

    mailcfg_render(inv, out, cache, env)  # writes the output tree and the bytecode once

    cli_rows: list[tuple[str, tuple[float, float, float], str]] = []
    cli_rows.append(
        (
            "`mailcfg render`, cold (empty cache, new process)",
            cli_runs(r, lambda: mailcfg_render(inv, out, cache, env), fresh_cache),
            "≤ 3 s",
        )
    )
    mailcfg_render(inv, out, cache, env)
    cli_rows.append(
        (
            "`mailcfg render`, warm, one domain file edited",
            cli_runs(
                r,
                lambda: mailcfg_render(inv, out, cache, env),
                lambda: touch_one_domain(inv, next(edits)),
            ),
            "≤ 1 s",
        )
    )
    rows.append(
        (
            "`load_inventory`, cold (in-process)",
            best_of(r, lambda: load_inventory(inv, cache_dir=cache), fresh_cache),
            "",
        )
    )
    load_inventory(inv, cache_dir=cache)
    stats = LoadStats()
    rows.append(
        (
            "`load_inventory`, warm, one domain file edited",
            best_of(
                r,
                lambda: load_inventory(inv, cache_dir=cache, stats=stats),
                lambda: touch_one_domain(inv, next(edits)),
            ),
            "",
        )
    )
    rows.append(("`load_inventory`, no cache", best_of(r, lambda: load_inventory(inv)), ""))
    datas = [f.read_bytes() for f in files]
    rows.append(
        (
            "rapidyaml fast path (parse only), 1,001 files",
            best_of(r, lambda: [parse_yaml(d) for d in datas]),
            "",
        )
    )
    safe = YAML(typ="safe")
    rt = YAML(typ="rt")
    rows.append(
        ("ruamel.yaml safe (C), 1,001 files", best_of(1, lambda: [safe.load(d) for d in datas]), "")
    )
    rows.append(
        ("ruamel.yaml round-trip, 1,001 files", best_of(1, lambda: [rt.load(d) for d in datas]), "")
    )
    big_data = big.read_bytes()
    big_mb = len(big_data) / 1e6
    rows.append(
        (
            f"rapidyaml fast path, one {big_mb:.1f} MB file (50,000 accounts)",
            best_of(r, lambda: parse_yaml(big_data)),
            "",
        )
    )
    rows.append(
        (
            f"ruamel.yaml safe (C), one {big_mb:.1f} MB file",
            best_of(1, lambda: safe.load(big_data)),
            "",
        )
    )
    rows.append(
        (
            f"ruamel.yaml round-trip, one {big_mb:.1f} MB file",
            best_of(1, lambda: rt.load(big_data)),
            "",
        )
    )

    print(
        f"\nInventory: {len(files) - 1} domain files + mailcfg.yml, {size / 1e6:.1f} MB; "
        f"warm run re-parsed {len(stats.parsed) // max(r, 1)} file(s) per run, "
        f"{len(stats.cached) // max(r, 1)} from cache; best of {r} (ruamel: 1 run)\n"
    )
    print("| `mailcfg render` (CLI) | best s | median s | median CPU s | target |")
    print("|---|---:|---:|---:|---|")
    for name, (best, median, cpu), target in cli_rows:
        print(f"| {name} | {best:.2f} | {median:.2f} | {cpu:.2f} | {target} |")
    print()
    print("| measurement | seconds | target |")
    print("|---|---:|---|")
    for name, seconds, target in rows:
        print(f"| {name} | {seconds:.2f} | {target} |")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
