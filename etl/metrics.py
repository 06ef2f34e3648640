"""Every run's metrics, for node_exporter's textfile collector and/or a Pushgateway.

A run replaces the series of its own kind and leaves every other kind's. A failed run
replaces only what it knows (its outcome, when it ended, how long it took): the last success
and the figures of that successful run stay, as Pushgateway's `pushadd` keeps them. Exporting
never fails a run: a failure to export is logged.
"""

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, pushadd_to_gateway
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from etl.definition import SKIP_RULES
from etl.rollup import Stats
from etl.settings import Settings

log = logging.getLogger("usage.metrics")

JOB = "usage_etl"
PUSH_TIMEOUT_SECONDS = 5.0
SKIP_REASONS = SKIP_RULES.split(", ")


@dataclass(frozen=True)
class RunMetrics:
    """What one run (or verify) exports; `stats` and `drift` only when it succeeded."""

    kind: str
    ok: bool
    ended: float  # seconds since the epoch
    seconds: float
    stats: Stats | None = None
    drifted_days: int | None = None
    drifted_months: int | None = None


def families(run: RunMetrics) -> list[Metric]:
    """The run's series, each labelled with its kind."""
    kind = run.kind

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["kind"])
        family.add_metric([kind], value)
        return family

    out: list[Metric] = [
        gauge("usage_run_succeeded", "1 when the last run of the kind succeeded, else 0.", run.ok),
        gauge("usage_run_last_end_timestamp_seconds", "When the last run ended.", run.ended),
        gauge("usage_run_duration_seconds", "How long the last run took.", run.seconds),
    ]
    if not run.ok:
        return out
    out.append(
        gauge(
            "usage_run_last_success_timestamp_seconds",
            "When the last successful run of the kind ended.",
            run.ended,
        )
    )
    if run.stats is not None:
        stats = run.stats
        out += [
            gauge("usage_run_days", "Days recomputed by the last successful run.", stats.days),
            gauge("usage_run_rows_written", "Rollup rows written by it.", stats.rows_written),
            gauge("usage_run_rows_removed", "Rollup rows removed by it.", stats.rows_removed),
            gauge("usage_run_conversations", "Conversations counted by it.", stats.conversations),
        ]
        skipped = GaugeMetricFamily(
            "usage_run_skipped",
            "Source documents the last successful run could not count, by reason.",
            labels=["kind", "reason"],
        )
        for reason in sorted(set(SKIP_REASONS) | set(stats.skipped)):
            skipped.add_metric([kind, reason], stats.skipped.get(reason, 0))
        out.append(skipped)
    if run.drifted_days is not None:
        out.append(
            gauge("usage_verify_drifted_days", "Days verify found drifted.", run.drifted_days)
        )
    if run.drifted_months is not None:
        out.append(
            gauge("usage_verify_drifted_months", "Months verify found drifted.", run.drifted_months)
        )
    return out


class Families(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def exposition(metrics: Iterable[Metric]) -> bytes:
    registry = CollectorRegistry()
    registry.register(Families(metrics))
    return generate_latest(registry)


def merged(previous: str, kind: str, new: list[Metric]) -> list[Metric]:
    """`previous` (a textfile) with the series of `new` replaced for `kind`, others kept."""
    names = {family.name for family in new}
    by_name: dict[str, Metric] = {}
    for family in text_string_to_metric_families(previous):
        kept = [
            sample
            for sample in family.samples
            if not (family.name in names and sample.labels.get("kind") == kind)
        ]
        if kept:
            copy = Metric(family.name, family.documentation, family.type)
            copy.samples = kept
            by_name[family.name] = copy
    for family in new:
        if family.name in by_name:
            by_name[family.name].samples += family.samples
        else:
            by_name[family.name] = family
    for family in by_name.values():
        family.samples.sort(key=lambda sample: sorted(sample.labels.items()))
    return [by_name[name] for name in sorted(by_name)]


def write_textfile(path: Path, kind: str, new: list[Metric]) -> None:
    """Merge into `path` through a temporary file renamed over it: node_exporter never
    reads half a file (it reads only `*.prom`, so the temporary name ends otherwise).

    Runs of different kinds may finish together (a repair during a nightly run): the
    read-merge-replace holds an exclusive lock on the directory, so neither loses the
    other's series, and no lock file is left beside the textfile.
    """
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        _merge_into(path, kind, new)
    finally:
        os.close(directory)  # releases the lock


def _merge_into(path: Path, kind: str, new: list[Metric]) -> None:
    previous = path.read_text() if path.exists() else ""
    body = exposition(merged(previous, kind, new))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        os.chmod(temporary, 0o644)  # node_exporter usually runs as another user
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def push(url: str, kind: str, new: list[Metric]) -> None:
    """`pushadd` to the group (job, kind): series of the same name are replaced, others kept."""
    registry = CollectorRegistry()
    registry.register(Families(new))
    pushadd_to_gateway(
        url, job=JOB, registry=registry, grouping_key={"kind": kind}, timeout=PUSH_TIMEOUT_SECONDS
    )


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def export(settings: Settings, run: RunMetrics) -> None:
    """Write and push the run's metrics where configured; log, never raise, on failure."""
    if settings.metrics_textfile is None and settings.pushgateway_url is None:
        return
    new = families(run)
    if settings.metrics_textfile is not None:
        path = settings.metrics_textfile
        try:
            write_textfile(path, run.kind, new)
        except Exception as exc:  # metrics must never fail the run
            log.warning(
                "could not write the run metrics to %s: %s",
                path,
                exc,
                extra={"kind": run.kind},
            )
    if settings.pushgateway_url is not None:
        url = settings.pushgateway_url
        try:
            push(url, run.kind, new)
        except Exception as exc:  # metrics must never fail the run
            log.warning(
                "could not push the run metrics to %s: %s",
                without_password(url),
                exc,
                extra={"kind": run.kind},
            )


@dataclass
class Findings:
    """What a measured run found, filled in by it before it ends."""

    stats: Stats | None = None
    drifted_days: int | None = None
    drifted_months: int | None = None


@contextlib.contextmanager
def measured(settings: Settings, kind: str) -> Iterator[Findings]:
    """Export the metrics of the run inside, whether it succeeds or fails, once it ended.

    A failure exports too when it could not be recorded (a database gone away).
    """
    started = time.monotonic()
    found = Findings()
    try:
        yield found
    except BaseException:
        export(settings, RunMetrics(kind, False, time.time(), time.monotonic() - started))
        raise
    seconds = time.monotonic() - started
    export(
        settings,
        RunMetrics(
            kind, True, time.time(), seconds, found.stats, found.drifted_days, found.drifted_months
        ),
    )
