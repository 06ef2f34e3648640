"""The `usage` command line, run as a user runs it: a subprocess with USAGE_* settings."""

import contextlib
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import typer
from bson import ObjectId

from etl import ledger, runs
from etl.cli import app
from etl.db import Databases, DatabaseUnavailable, DatabaseUnreachable
from etl.jobs import utcnow
from etl.settings import Settings
from tests.commands import COMMAND, clean_env, env_for, one_line, usage
from tests.conftest import free_port
from tests.factories import make_request


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["backfill", "--start", "2026-13-01", "--end", "2026-10-01"], "--start"),
        (["backfill", "--start", "2026-10-05", "--end", "2026-10-01"], "after --end"),
        (["backfill", "--start", "2026-10-01"], "--end"),
        (["rollup", "--frobnicate"], "--frobnicate"),
        (["verify", "--start", "yesterday", "--end", "2026-10-01"], "YYYY-MM-DD"),
        (["keys", "create", "--name", "x", "--org", "nope"], "ObjectId"),
        (["backfill", "--start", "20261001", "--end", "2026-10-02"], "YYYY-MM-DD"),
        (["verify", "--start", "2026-W40-1", "--end", "2026-10-02"], "YYYY-MM-DD"),
        (["backfill", "--start", "9999-12-31", "--end", "9999-12-31"], "supported dates"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(args: list[str], needle: str) -> None:
    result = usage(*args, env={"USAGE_MONGODB_URI": "mongodb://127.0.0.1:1/"})
    assert result.returncode == 2
    assert needle in one_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_days_at_the_calendar_ends_exit_2_without_recording_a_run(dbs: Databases) -> None:
    env = env_for(dbs, USAGE_TIMEZONE="Pacific/Kiritimati")
    for first, last in [("0001-01-01", "0001-01-05"), ("9998-12-31", "9999-12-31")]:
        result = usage("backfill", "--start", first, "--end", last, env=env)
        assert result.returncode == 2
        assert "outside the supported dates" in one_line(result.stderr)
    result = usage("backfill", "--start", "9998-12-31", "--end", "9998-12-31", env=env)
    assert result.returncode == 2
    assert "9998-12-31 has not begun in Pacific/Kiritimati" in one_line(result.stderr)
    assert dbs.rollup.etl_runs.count_documents({}) == 0
    result = usage("backfill", "--start", "0002-01-01", "--end", "0002-01-01", env=env)
    assert result.returncode == 0, result.stderr


def test_an_invalid_setting_is_named_at_start_up() -> None:
    result = usage("status", env={"USAGE_TIMEZONE": "Mars/Olympus"})
    assert result.returncode == 2
    assert "USAGE_TIMEZONE" in one_line(result.stderr)
    result = usage("status", env={"USAGE_TIMEZONE": "posixrules"})
    assert result.returncode == 2
    assert "USAGE_TIMEZONE" in one_line(result.stderr)
    result = usage("status", env={"USAGE_INTERNAL_ORG_IDS": '["xyz"]'})
    assert "USAGE_INTERNAL_ORG_IDS" in one_line(result.stderr)


def test_an_unreachable_database_fails_fast_with_one_line(dead_uri: str) -> None:
    uri = dead_uri.replace("mongodb://", "mongodb://ops:s3cret-pw@")
    result = usage(
        "rollup", env={"USAGE_MONGODB_URI": uri, "USAGE_SERVER_SELECTION_TIMEOUT_MS": "300"}
    )
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "cannot reach MongoDB" in line
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_rollup_then_status_reports_the_run(dbs: Databases) -> None:
    dbs.source.requests.insert_one(make_request(createdAt=utcnow()))
    result = usage("rollup", env=env_for(dbs))
    assert result.returncode == 0, result.stderr
    assert "1 conversations" in result.stdout
    status = usage("status", "--json", env=env_for(dbs))
    report = json.loads(status.stdout)
    assert report["runs"][0]["status"] == "ok"
    assert report["runs"][0]["kind"] == "nightly"
    assert report["lag_days"] == 0
    assert report["lock"] is None


def test_a_busy_lock_exits_3_naming_the_holder(dbs: Databases) -> None:
    runs.Lease(dbs.rollup, "night-host:42:abcd", 600).acquire(utcnow())
    result = usage("rollup", env=env_for(dbs))
    assert result.returncode == 3
    assert "night-host:42:abcd" in one_line(result.stderr)


def test_verify_exits_1_on_drift_and_repair_fixes_it(dbs: Databases) -> None:
    dbs.source.requests.insert_one(make_request(createdAt=datetime(2026, 10, 3, 9)))
    env = env_for(dbs)
    assert (
        usage("backfill", "--start", "2026-10-01", "--end", "2026-10-05", env=env).returncode == 0
    )
    assert usage("verify", "--start", "2026-10-01", "--end", "2026-10-05", env=env).returncode == 0
    dbs.source.requests.delete_many({})
    drift = usage("verify", "--start", "2026-10-01", "--end", "2026-10-05", env=env)
    assert drift.returncode == 1
    assert "2026-10-03" in drift.stdout
    repair = usage("verify", "--start", "2026-10-01", "--end", "2026-10-05", "--repair", env=env)
    assert repair.returncode == 0
    assert dbs.usage_daily().count_documents({}) == 0


def test_backfill_dry_run_writes_nothing(dbs: Databases) -> None:
    result = usage(
        "backfill", "--start", "2026-10-01", "--end", "2026-10-20", "--dry-run", env=env_for(dbs)
    )
    assert result.returncode == 0
    assert "20 days" in result.stdout
    assert dbs.rollup.etl_runs.count_documents({}) == 0


def test_a_range_past_today_is_built_through_today_saying_why_the_rest_is_not(
    dbs: Databases,
) -> None:
    env = env_for(dbs)  # UTC
    before = utcnow().date()
    first, last = before - timedelta(days=2), before + timedelta(days=5)
    result = usage("backfill", "--start", str(first), "--end", str(last), env=env)
    today = utcnow().date()
    assert result.returncode == 0, result.stderr
    assert f"days after {today} have not begun in UTC: not built" in one_line(result.stderr)
    built = [str(day) for day in ledger.covered_days(dbs, 1)]
    assert built == [str(first + timedelta(days=n)) for n in range((today - first).days + 1)]
    result = usage("rebuild", "--start", str(first), "--end", str(last), env=env)
    assert result.returncode == 0, result.stderr
    assert "have not begun in UTC: not built" in one_line(result.stderr)
    assert [str(day) for day in ledger.covered_days(dbs, 2)] == built
    for dry in ([], ["--dry-run"]):
        later = today + timedelta(days=1)
        result = usage("backfill", "--start", str(later), "--end", str(last), *dry, env=env)
        assert result.returncode == 2
        assert f"{later} has not begun in UTC (today there is {today})" in one_line(result.stderr)
    result = usage("backfill", "--start", str(first), "--end", str(last), "--dry-run", env=env)
    assert f"would recompute {(today - first).days + 1} days" in result.stdout
    assert "not built" in one_line(result.stderr)
    later = today + timedelta(days=2)
    result = usage("rebuild", "--start", str(later), "--end", str(last), env=env)
    assert result.returncode == 2
    assert f"{later} has not begun in UTC" in one_line(result.stderr)
    assert (
        "never computed"
        not in usage("verify", "--start", str(first), "--end", str(last), env=env).stdout
    )


def test_indexes_are_reported_then_created(dbs: Databases) -> None:
    shown = usage("indexes", env=env_for(dbs))
    assert [line.split()[0] for line in shown.stdout.splitlines()] == ["missing"] * 3
    applied = usage("indexes", "--apply", env=env_for(dbs))
    assert [line.split()[0] for line in applied.stdout.splitlines()] == ["created"] * 3
    names = {index["name"] for index in dbs.source.requests.list_indexes()}
    assert {"idx_billing_usage", "idx_created_at", "idx_updated_at"} <= names


def command_names() -> list[str]:
    names = [cmd.name or "" for cmd in app.registered_commands]
    names += [
        f"keys {cmd.name}" for cmd in app.registered_groups[0].typer_instance.registered_commands
    ]
    return names


def test_every_command_has_help_with_an_example_and_is_in_the_readme(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    callbacks: dict[str, Callable[..., object]] = {}
    for cmd in app.registered_commands:
        assert cmd.callback is not None
        callbacks[cmd.name or cmd.callback.__name__] = cmd.callback
    for name in command_names():
        assert f"usage {name}" in readme, name
    for name, callback in callbacks.items():
        assert callback.__doc__ and "Example: usage" in callback.__doc__, name


def test_keys_are_created_listed_and_revoked(dbs: Databases) -> None:
    env = env_for(dbs)
    created = usage("keys", "create", "--org", "65E18830A0616000137BB854", "--name", "GIC", env=env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.split()[-1]
    key_id = created.stdout.split()[2].rstrip(";")
    assert secret.startswith("usk_") and len(secret) > 40
    listed = usage("keys", "list", env=env)
    assert key_id in listed.stdout and "org 65e18830a0616000137bb854" in listed.stdout
    assert secret not in listed.stdout
    assert usage("keys", "revoke", key_id, env=env).returncode == 0
    again = usage("keys", "revoke", key_id, env=env)
    assert again.returncode == 2 and key_id in one_line(again.stderr)
    assert usage("keys", "create", "--name", "both", env=env).returncode == 2


def test_a_busy_embedded_database_is_named_in_one_line(tmp_path: Path) -> None:
    from etl.db import embedded_server

    with embedded_server(tmp_path):
        result = usage("status", env={"USAGE_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "USAGE_MONGODB_URI" in one_line(result.stderr)


def test_key_names_and_run_errors_are_printed_as_text_not_markup(dbs: Databases) -> None:
    env = env_for(dbs)
    names = ["[/oops] ops team", "[bold red]alert[/bold red]", "ops :thumbs_up: team"]
    for name in names:
        assert usage("keys", "create", "--staff", "--name", name, env=env).returncode == 0
    listed = usage("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    for name in names:
        assert name in listed.stdout
    dbs.rollup.etl_runs.insert_one(
        {"kind": "nightly", "status": "failed", "started_at": utcnow(), "error": "[/x] [red]boom"}
    )
    status = usage("status", env=env)
    assert status.returncode == 0, status.stderr
    assert "[/x] [red]boom" in status.stdout


def test_serve_starts_while_the_database_is_down_and_answers_503_saying_so(dead_uri: str) -> None:
    """A restart during an outage must not leave the API down after the database is back."""
    port = free_port()
    env = {"USAGE_MONGODB_URI": dead_uri, "USAGE_SERVER_SELECTION_TIMEOUT_MS": "300"}
    with subprocess.Popen(
        [*COMMAND, "serve", "--port", str(port)],
        env=clean_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ping", timeout=2):
                        break
                except OSError:
                    assert time.monotonic() < deadline, "the API never started"
                    time.sleep(0.1)
            with pytest.raises(urllib.error.HTTPError) as health:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10)
            assert health.value.code == 503
            assert json.loads(health.value.read())["database"] == "unreachable"
        finally:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
    first = stderr.splitlines()[0]
    assert first.startswith("warning: cannot reach MongoDB at mongodb://127.0.0.1:"), stderr
    assert first.endswith("; answering 503 until it does"), stderr


@pytest.mark.parametrize(
    ("refusal", "serves"),
    [
        (DatabaseUnreachable("cannot reach MongoDB at mongodb://db/"), True),
        (DatabaseUnavailable("authentication failed"), False),
    ],
)
def test_serving_outlasts_a_database_that_does_not_answer_but_not_one_that_refuses(
    monkeypatch: pytest.MonkeyPatch, refusal: Exception, serves: bool
) -> None:
    """Bad credentials would never come right by waiting: `usage serve` exits 1 on them."""
    from etl import cli

    class Refusing:
        def ping(self) -> None:
            raise refusal

    @contextlib.contextmanager
    def opened(settings: object) -> Iterator[Refusing]:
        yield Refusing()

    monkeypatch.setattr(cli, "open_databases", opened)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    if serves:
        with cli.databases(settings, serving=True) as dbs:
            assert isinstance(dbs, Refusing)
        return
    with pytest.raises(typer.Exit) as exited, cli.databases(settings, serving=True):
        pass
    assert exited.value.exit_code == 1


def test_ctrl_c_during_a_backfill_says_how_to_finish(dbs: Databases) -> None:
    args = ["backfill", "--start", "1950-01-01", "--end", "2026-10-31"]
    with subprocess.Popen(
        [*COMMAND, *args],
        env=clean_env(env_for(dbs)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.monotonic() + 60
        # Planned and recomputing: the run record has its range.
        while not dbs.rollup.etl_runs.find_one({"status": "running", "range": {"$ne": None}}):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert one_line(stderr) == "interrupted; run the same command again to finish"
    run = dbs.rollup.etl_runs.find_one()
    assert (run["status"], run["error"]) == ("failed", "interrupted")


@pytest.mark.parametrize("name", ["", "   "])
def test_a_key_needs_a_name(dbs: Databases, name: str) -> None:
    result = usage("keys", "create", "--staff", "--name", name, env=env_for(dbs))
    assert result.returncode == 2
    assert "--name" in one_line(result.stderr)
    assert dbs.rollup.api_keys.count_documents({}) == 0


def test_a_key_for_an_organization_missing_from_the_source_is_made_with_a_warning(
    dbs: Databases,
) -> None:
    known, unknown = "65e18830a0616000137bb854", "65e18830a0616000137bb8ff"
    dbs.source.organizations.insert_one({"_id": ObjectId(known), "name": "GIC"})
    env = env_for(dbs)
    made = usage("keys", "create", "--org", unknown, "--name", "typo", env=env)
    assert made.returncode == 0
    assert "usk_" in made.stdout
    warning = one_line(made.stderr)
    assert warning.startswith("warning: ") and unknown in warning
    quiet = usage("keys", "create", "--org", known.upper(), "--name", "GIC", env=env)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert dbs.rollup.api_keys.count_documents({}) == 2


def test_a_key_for_an_internal_organization_is_made_with_a_warning(dbs: Databases) -> None:
    internal = "65e18830a0616000137bb8ff"
    dbs.source.organizations.insert_one({"_id": ObjectId(internal), "name": "Staff"})
    env = env_for(dbs, USAGE_INTERNAL_ORG_IDS=f'["{internal.upper()}"]')
    made = usage("keys", "create", "--org", internal, "--name", "staff org", env=env)
    assert made.returncode == 0 and "usk_" in made.stdout
    warning = one_line(made.stderr)
    assert warning.startswith(f"warning: {internal} is an internal organization"), warning
    assert dbs.rollup.api_keys.count_documents({}) == 1


def test_status_on_the_embedded_database_names_its_storage_not_a_dead_uri(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = usage("status", env={"USAGE_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"database embedded ({data_dir})")
    assert "mongodb://" not in result.stdout
    report = json.loads(usage("status", "--json", env={"USAGE_DATA_DIR": str(data_dir)}).stdout)
    assert report["database"] == f"embedded ({data_dir})"


def add_nightly(dbs: Databases, status: str, through: str | None, started: datetime) -> None:
    dbs.rollup.etl_runs.insert_one(
        {
            "kind": "nightly",
            "status": status,
            "started_at": started,
            "finished_at": started,
            "complete_through": through,
            "error": None if status == "ok" else "interrupted",
        }
    )


def test_status_check_exits_0_only_after_a_good_nightly_run_on_fresh_data(dbs: Databases) -> None:
    env = env_for(dbs)
    never = usage("status", "--check", env=env)
    assert never.returncode == 1
    assert one_line(never.stdout).startswith("never ran")
    now = utcnow()
    add_nightly(dbs, "ok", (now.date() - timedelta(days=1)).isoformat(), now)
    fresh = usage("status", "--check", env=env)
    assert fresh.returncode == 0, fresh.stdout
    assert one_line(fresh.stdout).startswith("ok: data through")
    strict = usage("status", "--check", "--max-lag", "0", env=env)
    assert strict.returncode == 1
    assert one_line(strict.stdout).startswith("stale since")
    add_nightly(dbs, "running", None, now + timedelta(seconds=1))  # still going: not judged
    assert usage("status", "--check", env=env).returncode == 0
    add_nightly(dbs, "failed", None, now + timedelta(milliseconds=500))
    failed = usage("status", "--check", env=env)
    assert failed.returncode == 1
    assert one_line(failed.stdout).startswith("last nightly failed")
