"""The bench inventory generator (`bench/compile/generate.py`) and the small edits that the
render-cache tests (warm render equals cold, joined-base splices) make to what it wrote."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench/compile/generate.py")
assert _spec and _spec.loader
_generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_generate)
GENERATE = _generate.generate
HASH = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"


def domain_file(inv: Path, n: int) -> Path:
    """The n-th generated domain file."""
    return inv / "domains" / f"d{n:04d}.bench.test.yml"


def replace_once(path: Path, old: str, new: str) -> None:
    """`old` (which must be there) replaced by `new` once in the file."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
