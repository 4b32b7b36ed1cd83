"""Compile benchmark of two source trees, interleaved: `mailcfg render` of tree A, then of
tree B, then B, then A…, so a shared machine's drift falls on both alike.

Each tree renders its own copy of one generated inventory (1,000 domains, 50,000 accounts)
with its own cache, output directory and bytecode, in a fresh process per run: `warm` edits
one domain file before each run (as `run.py`'s warm row), `cold` empties the cache first.
Prints, per tree, the best and median wall time and the median CPU time (user + sys of the
process), which moves less than wall time when other work shares the machine. Then both trees
render the first tree's inventory, with their warm caches and with empty ones, and the output
trees must be byte-identical (files, bytes and modes), or it exits with an error.

    git worktree add /tmp/before <rev>
    python bench/compile/compare.py /tmp/before . --pairs 8 [--mode warm|cold] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import generate
from run import cli_environment, touch_one_domain


def render_once(
    tree: Path, work: Path, inv: Path | None = None, out: Path | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds of one `mailcfg render` by the sources in `tree` (of `inv` into
    `out`: by default those of `work`)."""
    inv, out, cache = inv or work / "inv", out or work / "out", work / "cache"
    cmd = [sys.executable, "-m", "compiler.cli", "render", str(inv), "--out", str(out)]
    cmd += ["--cache", str(cache)]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=tree, env=cli_environment(work), stdout=subprocess.DEVNULL)
    # wait4: the child's own CPU time, not that of every child waited for so far.
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{tree}: mailcfg render failed (exit {code})")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", type=Path, nargs=2, help="two source trees (A and B)")
    parser.add_argument("--pairs", type=int, default=8, help="runs of each tree")
    parser.add_argument("--mode", choices=("warm", "cold"), default="warm")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="mailcfg-compare-"))
    trees = [t.resolve() for t in args.trees]
    works = [base / f"tree{i}" for i in range(len(trees))]
    if not (base / "inv" / "mailcfg.yml").exists():
        generate(base / "inv")
    for work in works:
        if not (work / "inv").exists():
            shutil.copytree(base / "inv", work / "inv")
    for tree, work in zip(trees, works, strict=True):
        render_once(tree, work)  # the output tree and the bytecode
        render_once(tree, work)  # the caches
    runs: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
    edits = 0
    for pair in range(args.pairs):
        order = list(zip(trees, works, strict=True))
        for tree, work in order if pair % 2 == 0 else order[::-1]:
            if args.mode == "cold":
                shutil.rmtree(work / "cache", ignore_errors=True)
            else:
                edits += 1
                touch_one_domain(work / "inv", edits)
            runs[tree].append(render_once(tree, work))
    print(
        f"| tree ({args.mode}, {args.pairs} interleaved runs) | best s | median s | median CPU s |"
    )
    print("|---|---:|---:|---:|")
    for tree in trees:
        walls = [w for w, _ in runs[tree]]
        cpus = [c for _, c in runs[tree]]
        print(
            f"| {tree} | {min(walls):.3f} | {statistics.median(walls):.3f} "
            f"| {statistics.median(cpus):.3f} |"
        )
    check_same_output(trees, works, base / "check")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


def tree_files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def check_same_output(trees: list[Path], works: list[Path], check: Path) -> None:
    """Both trees render the first one's inventory, with their caches as the runs left them
    and with empty ones: every output must be the same files, bytes and modes."""
    shutil.rmtree(check, ignore_errors=True)
    outputs = []
    for kind in ("warm", "cold"):
        for i, (tree, work) in enumerate(zip(trees, works, strict=True)):
            if kind == "cold":
                shutil.rmtree(work / "cache", ignore_errors=True)
            out = check / f"{kind}-{i}"
            render_once(tree, work, inv=works[0] / "inv", out=out)
            outputs.append((f"{tree} ({kind} cache)", tree_files(out)))
    first_name, first = outputs[0]
    for name, files in outputs[1:]:
        if files != first:
            differ = sorted(k for k in first.keys() | files.keys() if first.get(k) != files.get(k))
            raise SystemExit(f"output differs: {name} vs {first_name}: {differ[:5]}")
    print(f"output byte-identical: {len(outputs)} renders of {len(first)} files")
    shutil.rmtree(check, ignore_errors=True)


if __name__ == "__main__":
    main()
