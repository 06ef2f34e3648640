"""Run the `usage` command as a user does: a subprocess with USAGE_* settings."""

import os
import subprocess
import sys

from etl.db import Databases

COMMAND = [sys.executable, "-m", "etl.cli"]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_")}
    env.update(extra or {})
    return env


def usage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, env=clean_env(env), timeout=180
    )


def env_for(dbs: Databases, **extra: str) -> dict[str, str]:
    s = dbs.settings
    env = {
        "USAGE_MONGODB_URI": dbs.uri,
        "USAGE_SOURCE_DB": s.source_db,
        "USAGE_ROLLUP_DB": s.rollup_db_name,
        "USAGE_LOCK_WAIT_SECONDS": "0",
    }
    env.update(extra)
    return env


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]
