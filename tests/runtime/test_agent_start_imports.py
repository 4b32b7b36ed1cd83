"""What `mailcfg-agent ingest` and `stats` load before they read a line: not the policy
service's modules (asyncio, the policy engine, its resolvers), which cost a backfill about
0.1 s of CPU and 5 MiB of memory at each start (README, bench/logparse)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICE_MODULES = (
    "asyncio",
    "runtime.daemon",
    "runtime.policy.engine",
    "runtime.policy.connection",
)


def test_log_commands_start_without_the_policy_service() -> None:
    code = (
        "import json, sys\n"
        "import runtime.cli, runtime.logs.commands, runtime.logs.ingest\n"
        f"print(json.dumps([m for m in {SERVICE_MODULES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
