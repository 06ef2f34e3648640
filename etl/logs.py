"""Log events on stderr: for a person by default, or structured with USAGE_LOG_FORMAT.

Without the setting, a person sees warnings and errors as `warning: ...` / `error: ...`
lines, except events marked `SHOWN`, which the command has already said in its own one line.
With `text` or `json`, every event from INFO up is written with its fields (run id, kind,
range, outcome, error): one line each, a JSON object per line for `json`. Secrets of URIs
are masked in every line, whatever logged them.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from etl.db import mask_uri

Format = Literal["text", "json"]
# In `extra`: the person was already told in one line (a command's error); only a
# structured log records it again.
SHOWN = {"shown": True}
# Not the caller's fields: the record's own, and uvicorn's copy of its message in colours.
STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "shown",
    "color_message",
}
HANDLER = "usage_logs"


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller passed in `extra`, secrets masked."""
    return {
        key: mask_uri(value) if isinstance(value, str) else value
        for key, value in record.__dict__.items()
        if key not in STANDARD
    }


def moment(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": moment(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": mask_uri(record.getMessage()),
            **fields(record),
        }
        if record.exc_info:
            event["exception"] = mask_uri(self.formatException(record.exc_info))
        return json.dumps(event, default=str)


class TextLines(logging.Formatter):
    """`TIME LEVEL LOGGER event key=value ...`; a traceback, if any, on the lines after."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(
            f"{key}={json.dumps(value, default=str)}" for key, value in fields(record).items()
        )
        line = f"{moment(record)} {record.levelname} {record.name} {mask_uri(record.getMessage())}"
        line = f"{line} {pairs}" if pairs else line
        if record.exc_info:
            line += "\n" + mask_uri(self.formatException(record.exc_info))
        return line


class ForAPerson(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        word = "error" if record.levelno >= logging.ERROR else "warning"
        return f"{word}: {mask_uri(record.getMessage())}"


def not_shown(record: logging.LogRecord) -> bool:
    return not getattr(record, "shown", False)


def configure(log_format: Format | None) -> None:
    """Send log events to stderr in `log_format`, or for a person when it is None.

    Called again (once the settings are read), it replaces what it set up before.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, HANDLER, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, HANDLER, True)
    if log_format is None:
        handler.setFormatter(ForAPerson())
        handler.addFilter(not_shown)
        root.setLevel(logging.WARNING)
    else:
        handler.setFormatter(JsonLines() if log_format == "json" else TextLines())
        root.setLevel(logging.INFO)
    root.addHandler(handler)
