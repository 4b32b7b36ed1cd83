"""The floor of a pure-Python ingest: a bare read loop with one regex per line, counting
nothing (the yardstick issue 15 names), so `run.py --floor` can show what no Python parser of
this log can go below on this machine.

    python bench/logparse/floor.py LOG

Each line is read by the file object's own loop (the cheapest way Python hands out lines)
and matched once by the cheapest regex that finds its program tag (timestamp, host, tag;
possessive, so it never backtracks): the least any parser must do to know what kind of line
it holds. The matches are counted, nothing else. Lines with an RFC 3339 timestamp (one word,
as Debian 12's rsyslog writes them and `generate.py` by default), which is why `run.py` takes
`--floor` only with that format.
"""

from __future__ import annotations

import re
import sys

LINE_RE = re.compile(r"[^ ]*+ [^ ]*+ ([^: ]++): ")


def count_lines(path: str) -> int:
    """Lines of `path` that have a program tag."""
    match = LINE_RE.match
    n = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if match(line):
                n += 1
    return n


if __name__ == "__main__":
    print(count_lines(sys.argv[1]))
