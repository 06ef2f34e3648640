"""The demo: sample data on the embedded server, a backfill and a nightly run, a table, the API."""

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import date, datetime, timedelta

from rich.console import Console
from rich.table import Table
from rich.text import Text

from etl import indexes, ledger, rollup, runner, sample, vanilla_sample
from etl.db import Databases
from etl.definition import of_settings
from etl.jobs import utcnow
from etl.profiles import ProfileName
from etl.settings import Settings

ProgressBar = Callable[[int, str], AbstractContextManager[rollup.Progress]]
# The tiledesk demo keeps to databases of its own, so that it never meets the deployment
# demo's data (its definition would differ and the rollup would be rebuilt each time).
VANILLA_SUFFIX = "_vanilla"


def demo_settings(settings: Settings, profile: ProfileName | None) -> Settings:
    """The settings the demo runs under: `profile` (else the configured one), and for the
    tiledesk profile databases named with `_vanilla`."""
    chosen = profile or settings.source_profile
    if chosen == "deployment":
        return settings.model_copy(update={"source_profile": chosen})
    return settings.model_copy(
        update={
            "source_profile": chosen,
            "source_db": settings.source_db + VANILLA_SUFFIX,
            "rollup_db": settings.rollup_db_name + VANILLA_SUFFIX,
        }
    )


def run(
    dbs: Databases, out: Console, progress_bar: ProgressBar, now: datetime, port: int, serve: bool
) -> None:
    from api.buckets import default_range

    today = rollup.local_today(now, dbs.settings)
    first, _ = default_range("platform", today)  # the six months the dashboard opens on
    spec = replace(sample.SampleSpec(), days=(today - first).days)
    made = sample.make_sample(spec)
    if dbs.source.requests.estimated_document_count() == 0:
        out.print(
            f"loading sample data ({spec.days} days up to now) into {dbs.settings.source_db}",
            markup=False,
        )
        if dbs.settings.source_profile == "tiledesk":
            count = vanilla_sample.load(dbs, spec, now)
        else:
            count = sample.load_sample(dbs, spec, now)
        out.print(f"loaded {count} conversations")
    if not dbs.settings.internal_org_ids:
        dbs.settings = dbs.settings.model_copy(update={"internal_org_ids": made.internal_ids})
        out.print(
            "internal organizations of the sample: USAGE_INTERNAL_ORG_IDS="
            + json.dumps(made.internal_ids),
            markup=False,
        )
    for line in indexes.report(dbs, apply=True):
        out.print(line, markup=False)
    last = today - timedelta(days=1)
    days = (last - first).days + 1
    state = ledger.read_state(dbs.rollup)
    unversioned = state is None and dbs.usage_daily().find_one() is not None
    if unversioned or (state is not None and state.definition != of_settings(dbs.settings)):
        # Data of an earlier demo, computed under other settings or an older pipeline.
        with progress_bar(days, "rebuild") as advance:
            result = runner.run_rebuild(dbs, now, dbs.server_time, first, last, advance)
        out.print(f"rebuild: {result.stats.days} days under the current settings")
    elif state is None or ledger.first_day(dbs, state.generation) is None:
        with progress_bar(days, "backfill") as advance:
            result = runner.run_backfill(dbs, first, last, now, dbs.server_time, advance)
        out.print(f"backfill: {result.stats.days} days, {result.stats.rows_written} rows")
    nightly = runner.run_nightly(dbs, dbs.server_time(), dbs.server_time)
    out.print(
        f"nightly: {nightly.stats.days} days, {nightly.stats.conversations} conversations, "
        f"skipped {dict(nightly.stats.skipped)}",
        markup=False,
    )
    print_table(dbs, out, today)
    settings = dbs.settings
    if not serve:
        # No address nobody serves, and no key nobody will paste.
        out.print(
            "\nnot serving (--no-serve): `usage serve` serves the dashboard, and "
            "`usage keys create --staff --name NAME` makes a key for it",
            markup=False,
        )
        if settings.source_profile != "deployment":
            out.print(
                f"both with: export USAGE_SOURCE_PROFILE={settings.source_profile}"
                f" USAGE_SOURCE_DB={settings.source_db}"
                f" USAGE_ROLLUP_DB={settings.rollup_db_name}",
                markup=False,
            )
        return
    from api import auth

    key_id, secret = auth.create_key(dbs.rollup, "demo staff key", None, utcnow())
    out.print(f"\ndashboard: http://127.0.0.1:{port}/  (API docs at /docs)", markup=False)
    out.print(f"staff API key {key_id}, paste it into the page: {secret}", markup=False)
    exports = f"USAGE_MONGODB_URI={dbs.uri}"
    if dbs.settings.source_profile != "deployment":
        exports += (
            f" USAGE_SOURCE_PROFILE={dbs.settings.source_profile}"
            f" USAGE_SOURCE_DB={dbs.settings.source_db}"
            f" USAGE_ROLLUP_DB={dbs.settings.rollup_db_name}"
        )
    out.print(f"other terminals: export {exports}  (while this runs)", markup=False)
    from api.server import serve_forever

    with contextlib.suppress(KeyboardInterrupt):  # stopping a server is no interruption to redo
        serve_forever(dbs, "127.0.0.1", port)


def print_table(dbs: Databases, out: Console, today: date) -> None:
    from api.auth import Principal
    from api.usage import UsageService, resolve_query

    service = UsageService(dbs, 0)
    query = resolve_query(
        scope="platform",
        org_id=None,
        agent_id=None,
        start=None,
        end=None,
        granularity="month",
        include_internal=False,
        principal=Principal("demo", "demo", None),
        today=today,
        settings=dbs.settings,
    )
    report = service.report(query)
    table = Table(title="Billable conversations per organization per month")
    table.add_column("organization")
    for bucket in report["buckets"]:
        table.add_column(bucket["label"], justify="right")
    table.add_column("total", justify="right")
    for row in [*report["rows"], report["total"]]:
        cells = [str(cell["conversations"]) for cell in row["buckets"]]
        # An organization's name is data: `[bold]` in it is shown, not applied.
        table.add_row(Text(row["name"]), *cells, str(row["totals"]["conversations"]))
    out.print(table)
