"""Every run writes its metrics for node_exporter's textfile collector; exporting never fails it."""

import logging
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl import runner
from etl.db import Databases
from etl.runner import RunContext, Work
from tests.conftest import free_port
from tests.factories import make_request

NOW = datetime(2026, 10, 20, 3, 0)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def clock() -> datetime:
    return NOW


def read(path: Path) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def of_kind(samples: Samples, kind: str) -> dict[str, float]:
    """A kind's series without a further label, by name."""
    return {name: value for (name, labels), value in samples.items() if labels == (("kind", kind),)}


def with_requests(dbs: Databases) -> Databases:
    dbs.source.requests.insert_many(
        [
            make_request(),
            make_request(createdAt=datetime(2026, 10, 15, 9, 0)),
            make_request(id_organization=None),  # skipped: no organization
        ]
    )
    return dbs


def failing_plan(ctx: RunContext) -> Work:
    raise RuntimeError("the plan broke")


def test_a_run_writes_its_metrics_for_the_textfile_collector(
    make_dbs: Callable[..., Databases], tmp_path: Path
) -> None:
    textfile = tmp_path / "usage.prom"
    dbs = with_requests(make_dbs(metrics_textfile=textfile))
    before = time.time()
    runner.run_backfill(dbs, date(2026, 10, 14), date(2026, 10, 16), NOW, clock)
    got = read(textfile)
    backfill = of_kind(got, "backfill")
    assert backfill["usage_run_succeeded"] == 1
    assert before <= backfill["usage_run_last_success_timestamp_seconds"] <= time.time()
    assert (
        backfill["usage_run_last_end_timestamp_seconds"]
        == (backfill["usage_run_last_success_timestamp_seconds"])
    )
    assert backfill["usage_run_duration_seconds"] > 0
    assert (backfill["usage_run_days"], backfill["usage_run_conversations"]) == (3, 2)
    assert (backfill["usage_run_rows_written"], backfill["usage_run_rows_removed"]) == (2, 0)
    skipped = (("kind", "backfill"), ("reason", "no_organization"))
    assert got[("usage_run_skipped", skipped)] == 1
    assert got[("usage_run_skipped", (("kind", "backfill"), ("reason", "bad_depth")))] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["usage.prom"]  # no temporary file left
    assert textfile.stat().st_mode & 0o777 == 0o644


def test_a_failed_run_keeps_the_last_success_and_other_kinds(
    make_dbs: Callable[..., Databases], tmp_path: Path
) -> None:
    textfile = tmp_path / "usage.prom"
    dbs = with_requests(make_dbs(metrics_textfile=textfile))
    runner.run_backfill(dbs, date(2026, 10, 14), date(2026, 10, 16), NOW, clock)
    runner.run_nightly(dbs, NOW, clock)
    success = of_kind(read(textfile), "backfill")
    with pytest.raises(RuntimeError):
        runner.execute(dbs, "backfill", NOW, clock, failing_plan)
    got = read(textfile)
    failed = of_kind(got, "backfill")
    assert failed["usage_run_succeeded"] == 0
    assert (
        failed["usage_run_last_end_timestamp_seconds"]
        >= (success["usage_run_last_success_timestamp_seconds"])
    )
    for name in ["usage_run_last_success_timestamp_seconds", "usage_run_days"]:
        assert failed[name] == success[name]
    assert of_kind(got, "nightly")["usage_run_succeeded"] == 1


def test_verify_exports_the_drift_it_found(
    make_dbs: Callable[..., Databases], tmp_path: Path
) -> None:
    textfile = tmp_path / "usage.prom"
    dbs = with_requests(make_dbs(metrics_textfile=textfile))
    runner.run_backfill(dbs, date(2026, 10, 14), date(2026, 10, 16), NOW, clock)
    dbs.source.requests.insert_one(make_request(createdAt=datetime(2026, 10, 16, 8, 0)))
    runner.verify_range(dbs, date(2026, 10, 14), date(2026, 10, 16), NOW, clock)
    verify = of_kind(read(textfile), "verify")
    assert (verify["usage_run_succeeded"], verify["usage_verify_drifted_days"]) == (1, 1)
    assert verify["usage_verify_drifted_months"] == 0  # the month totals match its days


@pytest.mark.parametrize("where", ["textfile", "pushgateway"])
def test_a_metrics_export_that_fails_never_fails_the_run(
    make_dbs: Callable[..., Databases],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    setting = {
        "textfile": {"metrics_textfile": tmp_path / "no" / "such" / "dir" / "usage.prom"},
        "pushgateway": {"pushgateway_url": f"http://ops:hunter2@127.0.0.1:{free_port()}"},
    }[where]
    dbs = with_requests(make_dbs(**setting))
    with caplog.at_level(logging.WARNING, logger="usage.metrics"):
        result = runner.run_backfill(dbs, date(2026, 10, 14), date(2026, 10, 16), NOW, clock)
    assert result.stats.conversations == 2
    assert [record.getMessage().split(" to ")[0] for record in caplog.records] == [
        f"could not {'write' if where == 'textfile' else 'push'} the run metrics"
    ]
    assert "hunter2" not in caplog.text


def test_runs_of_different_kinds_finishing_together_keep_each_others_series(
    tmp_path: Path,
) -> None:
    """Many concurrent merges into one textfile: every kind's last write survives."""
    import threading

    from etl.metrics import RunMetrics, families, write_textfile

    textfile = tmp_path / "usage.prom"
    kinds = [f"kind{n}" for n in range(8)]
    start = threading.Barrier(len(kinds))

    def finish(kind: str) -> None:
        start.wait()
        for attempt in range(15):
            run = RunMetrics(kind=kind, ok=False, ended=1000.0 + attempt, seconds=1.0)
            write_textfile(textfile, kind, families(run))

    threads = [threading.Thread(target=finish, args=(kind,)) for kind in kinds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = read(textfile)
    ended = {
        kind: of_kind(samples, kind).get("usage_run_last_end_timestamp_seconds") for kind in kinds
    }
    assert ended == dict.fromkeys(kinds, 1014.0)
