"""Log events: one per run start and end and per error, as text or JSON, never a secret."""

import json
import logging
import subprocess
import time
import urllib.request
from datetime import datetime
from typing import Any

import pytest

from etl import logs
from etl.db import Databases
from tests.commands import COMMAND, clean_env, env_for, one_line, usage
from tests.conftest import free_port
from tests.factories import make_request


def record(message: str, **extra: Any) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "usage.runs", "levelno": 20, "levelname": "INFO"})
    made.msg, made.created = message, datetime(2026, 11, 25, 2, 15).timestamp()
    made.__dict__.update(extra)
    return made


def test_a_json_event_has_time_level_event_and_its_fields_with_secrets_masked() -> None:
    line = logs.JsonLines().format(
        record(
            "run failed",
            run_id="66",
            kind="nightly",
            range=["2026-11-21", "2026-11-25"],
            error="cannot reach MongoDB at mongodb://ops:hunter2@db:27017/",
            shown=True,
        )
    )
    event = json.loads(line)
    assert event.pop("time").endswith("Z")
    assert event == {
        "level": "info",
        "logger": "usage.runs",
        "event": "run failed",
        "run_id": "66",
        "kind": "nightly",
        "range": ["2026-11-21", "2026-11-25"],
        "error": "cannot reach MongoDB at mongodb://ops:***@db:27017/",
    }


def test_a_text_event_is_one_line_with_its_fields() -> None:
    line = logs.TextLines().format(record("run finished", kind="backfill", outcome="ok", days=3))
    assert line.endswith(' INFO usage.runs run finished kind="backfill" outcome="ok" days=3')
    assert "\n" not in line


def test_uvicorns_coloured_copy_of_a_message_is_not_a_field() -> None:
    """uvicorn logs "Started server process [%d]" with the same text in ANSI colours."""
    coloured = record("Started server process", color_message="\x1b[36mStarted\x1b[0m")
    assert logs.TextLines().format(coloured).endswith(" Started server process")
    assert "color_message" not in logs.fields(coloured)


def json_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def test_a_command_logs_its_run_start_and_end_as_json(dbs: Databases) -> None:
    dbs.source.requests.insert_one(make_request())
    result = usage(
        "backfill",
        "--start",
        "2026-10-13",
        "--end",
        "2026-10-15",
        env=env_for(dbs, USAGE_LOG_FORMAT="json"),
    )
    assert result.returncode == 0, result.stderr
    events = [e for e in json_events(result.stderr) if e["logger"] == "usage.runs"]
    assert [(e["event"], e["level"]) for e in events] == [
        ("run started", "info"),
        ("run finished", "info"),
    ]
    started, finished = events
    assert started["run_id"] == finished["run_id"]
    assert started["kind"] == finished["kind"] == "backfill"
    assert started["range"] == finished["range"] == ["2026-10-13", "2026-10-15"]
    assert (finished["outcome"], finished["conversations_counted"]) == ("ok", 1)
    assert result.stdout.startswith("backfill: 3 days")


def test_an_error_is_an_event_and_still_one_line_for_a_person(dead_uri: str) -> None:
    uri = dead_uri.replace("mongodb://", "mongodb://ops:hunter2@")
    env = {"USAGE_MONGODB_URI": uri, "USAGE_SERVER_SELECTION_TIMEOUT_MS": "300"}
    plain = usage("rollup", env=env)
    assert plain.returncode == 1
    assert one_line(plain.stderr).startswith("error: cannot reach MongoDB at mongodb://ops:***@")
    structured = usage("rollup", env={**env, "USAGE_LOG_FORMAT": "json"})
    assert structured.returncode == 1
    lines = structured.stderr.splitlines()
    assert lines[-1] == one_line(plain.stderr)
    errors = [e for e in json_events("\n".join(lines[:-1])) if e["level"] == "error"]
    assert [e["exit_code"] for e in errors] == [1]
    assert "hunter2" not in structured.stderr + plain.stderr


def test_the_server_logs_as_json_too(dbs: Databases) -> None:
    port = free_port()
    env = clean_env(env_for(dbs, USAGE_LOG_FORMAT="json"))
    server = subprocess.Popen(
        [*COMMAND, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ping", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # SIGTERM ends the command as Ctrl-C does, with its line for a person after the events.
    events = json_events("\n".join(line for line in stderr.splitlines() if line.startswith("{")))
    assert any(e["logger"].startswith("uvicorn") for e in events), stderr
    assert all(e["level"] in {"info", "warning", "error"} for e in events)


@pytest.mark.parametrize("log_format", [None, "text", "json"])
def test_configure_replaces_its_own_handler(log_format: Any) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        logs.configure("json")
        logs.configure(log_format)
        ours = [h for h in root.handlers if getattr(h, logs.HANDLER, False)]
        assert len(ours) == 1
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_a_person_sees_warnings_but_not_errors_already_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        logs.configure(None)
        log = logging.getLogger("usage.test")
        log.info("not for a person")
        log.warning("a warning")
        log.error("already said in one line", extra=logs.SHOWN)
        log.error("an error nobody said")
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
    assert capsys.readouterr().err.splitlines() == [
        "warning: a warning",
        "error: an error nobody said",
    ]
