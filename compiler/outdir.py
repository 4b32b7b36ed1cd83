"""Write rendered trees to a local directory (`mailcfg render --out DIR`): DIR/<host>/<path>.

Only files whose bytes or mode differ are written (each through a temporary file and an atomic
rename), so rendering a large inventory again after a small edit rewrites a few files instead
of thousands. Files the tree no longer has are removed: the directory is the host's render
output, and a stale file would mislead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from compiler.types import FileTree, RenderedFile

_TMP_SUFFIX = ".mailcfg-new"


def _unchanged(dest: str, file: RenderedFile) -> bool:
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    if (
        not stat.S_ISREG(st.st_mode)
        or stat.S_IMODE(st.st_mode) != file.mode
        or st.st_size != len(file.content)
    ):
        return False
    # os-level calls: a Python file object costs more than the read for a small file.
    fd = os.open(dest, os.O_RDONLY)
    try:
        return os.read(fd, st.st_size + 1) == file.content
    finally:
        os.close(fd)


def write_tree(tree: FileTree, directory: Path) -> int:
    """Make `directory` hold exactly the files of `tree`; returns how many files it holds."""
    root = os.fspath(directory)
    keep: set[str] = set()
    parents: set[str] = set()
    for path in tree:
        file = tree[path]
        dest = os.path.join(root, path.lstrip("/"))
        keep.add(dest)
        if _unchanged(dest, file):
            continue
        parent = os.path.dirname(dest)
        if parent not in parents:
            os.makedirs(parent, exist_ok=True)
            parents.add(parent)
        tmp = dest + _TMP_SUFFIX
        with open(tmp, "wb") as f:
            f.write(file.content)
        os.chmod(tmp, file.mode)
        os.replace(tmp, dest)
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if p not in keep:
                os.unlink(p)
    return len(keep)
