"""Read and validate `jobs.toml`, and wire its jobs into an APScheduler scheduler."""

import importlib
import signal
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from etl.settings import known_zones


class JobsFileError(Exception):
    """jobs.toml is missing or wrong; the message names the job and the field."""


@dataclass(frozen=True)
class JobSpec:
    name: str
    func: Callable[[], None]
    ref: str
    trigger: CronTrigger
    misfire_grace_seconds: int
    coalesce: bool
    max_instances: int


def resolve(ref: str) -> Callable[[], None]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{ref!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(f"module {module_name!r} cannot be imported") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    return func  # type: ignore[no-any-return]


def parse_jobs(text: str) -> list[JobSpec]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobsFileError(f"jobs.toml is not valid TOML: {exc}") from None
    zone_name = data.get("timezone", "UTC")
    if not isinstance(zone_name, str) or zone_name not in known_zones():
        raise JobsFileError(f"jobs.toml: unknown timezone {zone_name!r}")
    zone = ZoneInfo(zone_name)
    jobs = data.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise JobsFileError("jobs.toml defines no [jobs.NAME] table")
    specs = []
    known = {"func", "cron", "misfire_grace_seconds", "coalesce", "max_instances"}
    for name, table in jobs.items():
        specs.append(_job(name, table, zone, known))
    return specs


def _job(name: str, table: Any, zone: ZoneInfo, known: set[str]) -> JobSpec:
    where = f"jobs.toml [jobs.{name}]"
    if not isinstance(table, dict):
        raise JobsFileError(f"{where} is not a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise JobsFileError(f"{where}: unknown field {unknown[0]!r}")
    for required in ("func", "cron"):
        if not isinstance(table.get(required), str):
            raise JobsFileError(f"{where}: {required} must be a string")
    try:
        func = resolve(table["func"])
    except ValueError as exc:
        raise JobsFileError(f"{where} func: {exc}") from None
    try:
        trigger = CronTrigger.from_crontab(table["cron"], timezone=zone)
    except ValueError as exc:
        raise JobsFileError(f"{where} cron {table['cron']!r}: {exc}") from None
    grace = table.get("misfire_grace_seconds", 3600)
    instances = table.get("max_instances", 1)
    coalesce = table.get("coalesce", True)
    if not isinstance(grace, int) or grace < 1:
        raise JobsFileError(f"{where}: misfire_grace_seconds must be a positive integer")
    if not isinstance(instances, int) or instances < 1:
        raise JobsFileError(f"{where}: max_instances must be a positive integer")
    if not isinstance(coalesce, bool):
        raise JobsFileError(f"{where}: coalesce must be true or false")
    return JobSpec(name, func, table["func"], trigger, grace, coalesce, instances)


def load_jobs(path: Path) -> list[JobSpec]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobsFileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_jobs(text)


def build_scheduler(specs: list[JobSpec]) -> BlockingScheduler:
    scheduler = BlockingScheduler()
    for spec in specs:
        scheduler.add_job(
            spec.func,
            spec.trigger,
            id=spec.name,
            name=spec.name,
            misfire_grace_time=spec.misfire_grace_seconds,
            coalesce=spec.coalesce,
            max_instances=spec.max_instances,
        )
    return scheduler


def run_forever(scheduler: BlockingScheduler) -> None:
    """Block until SIGTERM or SIGINT, then let a running job finish and stop."""

    def stop(signum: int, frame: FrameType | None) -> None:
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.start()
