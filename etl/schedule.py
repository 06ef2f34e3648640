"""Read and validate `jobs.toml`, and wire its jobs into an APScheduler scheduler."""

import inspect
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

from etl import jobs as job_functions
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
    """The function of etl.jobs that `ref` names: a jobs file can run nothing else."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{ref!r} is not of the form 'module:function'")
    module = job_functions.__name__
    if module_name != module:
        raise ValueError(f"{ref!r} is not in {module}, the only module a job may name")
    func = getattr(job_functions, attr, None)
    # Names etl.jobs imports from elsewhere are not jobs.
    if attr.startswith("_") or not inspect.isfunction(func) or func.__module__ != module:
        raise ValueError(f"{module} has no job function {attr!r}")
    return func


def positive_int(value: Any) -> bool:
    # TOML's `true` arrives as a bool, and a bool is an int in Python.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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
    if not positive_int(grace):
        raise JobsFileError(f"{where}: misfire_grace_seconds must be a positive integer")
    if not positive_int(instances):
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
