"""The suite is hermetic: the caller's USAGE_* variables and .env file never reach a test."""

import os
import subprocess
import sys
from pathlib import Path

from etl.settings import load_settings
from tests.commands import usage


def test_a_test_sees_default_settings() -> None:
    assert load_settings().timezone == "UTC"
    assert not Path(".env").exists()
    dry_run = usage("backfill", "--start", "2026-10-01", "--end", "2026-10-02", "--dry-run")
    assert dry_run.returncode == 0, dry_run.stderr


def test_the_callers_usage_variables_and_env_file_do_not_reach_tests(
    repo_root: Path, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("USAGE_TIMEZONE=Asia/Tokyo\nUSAGE_LOOKBACK_DAYS=-1\n")
    inner = repo_root / "tests" / "test_isolation.py"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            f"{inner}::test_a_test_sees_default_settings",
        ],
        cwd=tmp_path,
        env={**os.environ, "USAGE_TIMEZONE": "Europe/Rome"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
