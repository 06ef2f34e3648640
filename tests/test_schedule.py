"""jobs.toml validation, the scheduler's start-up and its clean stop on SIGTERM."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etl import jobs
from etl.schedule import JobsFileError, load_jobs, parse_jobs
from etl.settings import SettingsError, load_settings

GOOD = """
timezone = "Europe/Rome"
[jobs.nightly_rollup]
func = "etl.jobs:nightly_rollup"
cron = "15 2 * * *"
"""


def test_the_projects_jobs_file_is_valid(repo_root: Path) -> None:
    specs = {spec.name: spec for spec in load_jobs(repo_root / "jobs.toml")}
    assert specs["nightly_rollup"].func is jobs.nightly_rollup
    assert specs["nightly_rollup"].max_instances == 1
    assert specs["nightly_rollup"].coalesce is True
    assert specs["weekly_repair"].func is jobs.weekly_repair


def test_cron_fields_and_timezone_are_applied() -> None:
    (spec,) = parse_jobs(GOOD)
    assert str(spec.trigger.timezone) == "Europe/Rome"
    assert {f.name: str(f) for f in spec.trigger.fields}["hour"] == "2"
    assert {f.name: str(f) for f in spec.trigger.fields}["minute"] == "15"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("etl.jobs:nightly_rollup", "etl.jobs:nope"), "no job function 'nope'"),
        (
            GOOD.replace("etl.jobs:nightly_rollup", "etl.nothing:run"),
            "the only module a job may name",
        ),
        (GOOD.replace("etl.jobs:nightly_rollup", "os:system"), "func: 'os:system' is not in"),
        (GOOD.replace("etl.jobs:nightly_rollup", "etl.jobs:open_databases"), "no job function"),
        (GOOD.replace("etl.jobs:nightly_rollup", "etl.jobs:__loader__"), "no job function"),
        (GOOD + "max_instances = true\n", "max_instances must be a positive integer"),
        (GOOD + "max_instances = 0\n", "max_instances must be a positive integer"),
        (GOOD + "misfire_grace_seconds = true\n", "misfire_grace_seconds must be a positive"),
        (GOOD + "misfire_grace_seconds = 1.5\n", "misfire_grace_seconds must be a positive"),
        (GOOD.replace("etl.jobs:nightly_rollup", "etl.jobs"), "module:function"),
        (GOOD.replace("15 2 * * *", "61 2 * * *"), "cron '61 2 * * *'"),
        (GOOD.replace("15 2 * * *", "15 2 * *"), "cron '15 2 * *'"),
        (GOOD.replace("Europe/Rome", "Mars/Base"), "unknown timezone"),
        (GOOD.replace("Europe/Rome", "posixrules"), "unknown timezone"),
        (GOOD.replace('"Europe/Rome"', '["UTC"]'), "unknown timezone"),
        (GOOD + "max_instnces = 2\n", "unknown field 'max_instnces'"),
        (GOOD + "coalesce = 1\n", "coalesce must be true or false"),
        ('timezone = "UTC"\n', "no [jobs.NAME]"),
        ("[jobs\n", "not valid TOML"),
    ],
)
def test_a_bad_jobs_file_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(JobsFileError, match=message.replace("*", r"\*").replace("[", r"\[")):
        parse_jobs(text)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (GOOD.replace("15 2", "15 25"), "[jobs.nightly_rollup] cron"),
        (GOOD.replace("etl.jobs:nightly_rollup", "os:system"), "[jobs.nightly_rollup] func"),
        (GOOD + "max_instances = true\n", "[jobs.nightly_rollup]: max_instances"),
    ],
)
def test_scheduler_refuses_a_bad_jobs_file_in_one_line(
    tmp_path: Path, text: str, named: str
) -> None:
    bad = tmp_path / "jobs.toml"
    bad.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "etl.cli", "scheduler", "--jobs", str(bad), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert named in result.stderr
    assert result.stdout == ""


def test_scheduler_stops_cleanly_on_sigterm(repo_root: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "etl.cli", "scheduler", "--jobs", str(repo_root / "jobs.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("job nightly_rollup: etl.jobs:nightly_rollup")
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"USAGE_INTERNAL_ORG_IDS": '["65E18830A0616000137BB854"]'}, ["65e18830a0616000137bb854"]),
        (
            {"USAGE_INTERNAL_ORG_IDS": "65e18830a0616000137bb854, 65e18830a0616000137bb855"},
            ["65e18830a0616000137bb854", "65e18830a0616000137bb855"],
        ),
        ({}, []),
    ],
)
def test_internal_org_ids_take_json_or_commas(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: list[str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().internal_org_ids == expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"USAGE_TIMEZONE": "Nowhere/City"}, "USAGE_TIMEZONE"),
        ({"USAGE_TIMEZONE": "posixrules"}, "USAGE_TIMEZONE"),
        ({"USAGE_TIMEZONE": "right/UTC"}, "USAGE_TIMEZONE"),
        ({"USAGE_TIMEZONE": "posix/Europe/Rome"}, "USAGE_TIMEZONE"),
        ({"USAGE_TIMEZONE": "localtime"}, "USAGE_TIMEZONE"),
        ({"USAGE_TIMEZONE": "../zoneinfo/UTC"}, "USAGE_TIMEZONE"),
        ({"USAGE_LOOKBACK_DAYS": "-1"}, "USAGE_LOOKBACK_DAYS"),
        ({"USAGE_WEEK_START": "someday"}, "USAGE_WEEK_START"),
        ({"USAGE_READ_PREFERENCE": "nearestish"}, "USAGE_READ_PREFERENCE"),
        ({"USAGE_EMBEDDED_CACHE": "4 gigs"}, "USAGE_EMBEDDED_CACHE"),
        ({"USAGE_EMBEDDED_CACHE": "0G"}, "USAGE_EMBEDDED_CACHE"),
        ({"USAGE_EMBEDDED_CACHE": "1M"}, "USAGE_EMBEDDED_CACHE"),
        ({"USAGE_EMBEDDED_CACHE": "16384G"}, "USAGE_EMBEDDED_CACHE"),
    ],
)
def test_an_invalid_setting_names_itself(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=f"^invalid setting {named}: "):
        load_settings()


@pytest.mark.parametrize(
    ("given", "passed"), [("4G", "4G"), ("512mb", "512M"), (" 8 gb ", "8G"), ("256M", "256M")]
)
def test_cache_sizes_are_read_as_the_server_takes_them(
    monkeypatch: pytest.MonkeyPatch, given: str, passed: str
) -> None:
    monkeypatch.setenv("USAGE_EMBEDDED_CACHE", given)
    assert load_settings().embedded_cache == passed


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Rome", "America/Argentina/Buenos_Aires", "Etc/GMT+12"]
)
def test_iana_zones_are_accepted(monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    monkeypatch.setenv("USAGE_TIMEZONE", zone)
    assert load_settings().zone.key == zone
