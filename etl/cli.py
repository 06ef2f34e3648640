"""The `usage` command line: each command parses, calls one function, prints."""

import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from etl import dates, freshness, ledger, logs, platform, rollup, runner, runs, sketches
from etl.db import (
    Databases,
    DatabaseUnavailable,
    DatabaseUnreachable,
    mask_uri,
    open_databases,
    plain_error,
)
from etl.definition import DefinitionMismatch
from etl.jobs import utcnow
from etl.profiles import ProfileName
from etl.settings import EMBEDDED, Settings, SettingsError, load_settings

app = typer.Typer(
    help="Usage analytics: the daily rollup of billable conversations, and its API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# Data (key names, errors, organization names) is printed as text, never read as markup.
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, emoji=False)

EXIT_USAGE = 2
EXIT_BUSY = 3
EXIT_INTERRUPTED = 130
log = logging.getLogger("usage.cli")


@dataclass
class Context:
    settings: Settings


def fail(message: str, code: int = 1) -> NoReturn:
    log.error(message, extra={"exit_code": code, **logs.SHOWN})
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_of(ctx: typer.Context) -> Settings:
    obj = ctx.find_object(Context)
    assert obj is not None
    return obj.settings


@contextlib.contextmanager
def databases(settings: Settings, serving: bool = False) -> Iterator[Databases]:
    """Open the databases, turning failures the user can fix into one line. `serving`, a
    database that does not answer yet is a warning, not an error (one that refuses, such as
    bad credentials, still is)."""
    try:
        with open_databases(settings) as dbs:
            try:
                dbs.ping()
            except DatabaseUnreachable as exc:
                if not serving:
                    raise
                err.print(
                    f"warning: {exc}; answering 503 until it does", markup=False, soft_wrap=True
                )
            yield dbs
    except DatabaseUnavailable as exc:
        fail(str(exc))
    except runs.LockBusy as exc:
        fail(str(exc), EXIT_BUSY)
    except (DefinitionMismatch, runner.NothingToRebuild, runner.NotBegun) as exc:
        fail(str(exc), EXIT_USAGE)
    except PyMongoError as exc:
        fail(plain_error(exc, settings.mongodb_uri))
    except (rollup.TransactionTooLong, platform.UnreadableDocument) as exc:
        fail(" ".join(str(exc).split()))
    except sketches.UnreadableSketch as exc:
        fail(str(exc))


def parse_day(value: str, option: str) -> date:
    try:
        return dates.parse_day(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def parse_range(start: str, end: str) -> tuple[date, date]:
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    if first > last:
        raise typer.BadParameter(f"{start} is after --end {end}", param_hint="--start")
    return first, last


@contextlib.contextmanager
def progress_bar(total: int, label: str) -> Iterator[rollup.Progress]:
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "days",
        TimeRemainingColumn(),
    )
    # Only a terminal gets a bar; logs of unattended runs get the one-line summary.
    with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=total)
        yield lambda days: bar.advance(task, days)


def print_result(result: runner.RunResult, kind: str) -> None:
    stats = result.stats
    span = f"{result.days[0]} to {result.days[-1]}" if result.days else "no days"
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items())) or "none"
    out.print(
        f"{kind}: {stats.days} days ({span}) in {result.seconds:.1f}s; "
        f"{stats.conversations} conversations; rows written {stats.rows_written}, "
        f"removed {stats.rows_removed}; skipped: {skipped}",
        markup=False,
    )


@app.callback()
def main_callback(ctx: typer.Context) -> None:
    """Read the USAGE_* settings once for every command."""
    try:
        ctx.obj = Context(load_settings())
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)
    logs.configure(ctx.obj.settings.log_format)


@app.command(name="rollup")
def rollup_command(ctx: typer.Context) -> None:
    """Run the nightly rollup: lookback window, missed nights and changed older days.

    Example: usage rollup
    """
    with databases(settings_of(ctx)) as dbs:
        result = runner.run_nightly(dbs, dbs.server_time(), dbs.server_time)
    print_result(result, "nightly")


@app.command()
def backfill(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (reporting timezone).")],
    end: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD, inclusive.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")] = False,
) -> None:
    """Recompute a range of days; safe to interrupt and run again.

    Example: usage backfill --start 2026-05-01 --end 2026-10-31
    """
    first, last = parse_range(start, end)
    settings = settings_of(ctx)
    if dry_run:
        today = rollup.local_today(utcnow(), settings)
        try:
            planned = runner.backfill_days(first, last, today, settings)
        except runner.NotBegun as exc:
            fail(str(exc), EXIT_USAGE)
        batches = len(list(rollup.batches(planned)))
        out.print(
            f"would recompute {len(planned)} days ({first} to {planned[-1]}) in {batches} batches"
        )
        not_begun(last, today, settings)
        return
    with databases(settings) as dbs:
        now = dbs.server_time()
        days = runner.backfill_days(first, last, rollup.local_today(now, settings), settings)
        with progress_bar(len(days), "backfill") as advance:
            result = runner.run_backfill(dbs, first, last, now, dbs.server_time, advance)
    print_result(result, "backfill")
    not_begun(last, date.fromisoformat(result.record["today"]), settings)


def not_begun(last: date | None, today: date, settings: Settings) -> None:
    """Say that the days of a range after today were left out: they have not begun."""
    if last is not None and last > today:
        err.print(
            f"note: the days after {today} have not begun in {settings.timezone}: not built",
            markup=False,
        )


@app.command()
def rebuild(
    ctx: typer.Context,
    start: Annotated[
        str | None,
        typer.Option(help="Also build first..last (every computed day is always rebuilt)."),
    ] = None,
    end: Annotated[str | None, typer.Option(help="Last day, inclusive.")] = None,
) -> None:
    """Rebuild the rollup under the current settings into a new generation, then switch.

    Every computed day is rebuilt; --start/--end add a range to them. The API serves the
    current generation until the switch; an interrupted rebuild goes on where it stopped
    when run again.

    Example: usage rebuild --start 2026-05-01 --end 2026-10-31
    """
    if (start is None) != (end is None):
        raise typer.BadParameter("give both --start and --end, or neither", param_hint="--start")
    first, last = parse_range(start, end) if start and end else (None, None)
    settings = settings_of(ctx)
    with databases(settings) as dbs:
        state = ledger.read_state(dbs.rollup)
        generation = state.generation if state else 1
        now = dbs.server_time()
        today = rollup.local_today(now, settings)
        days = [d for d in runner.rebuild_days(dbs, generation, first, last) if d <= today]
        with progress_bar(len(days), "rebuild") as advance:
            result = runner.run_rebuild(dbs, now, dbs.server_time, first, last, advance)
    print_result(result, "rebuild")
    not_begun(last, date.fromisoformat(result.record["today"]), settings)
    out.print(
        f"serving generation {result.record['switched_to']} "
        f"(was {result.record['switched_from']}) under {settings.timezone}",
        markup=False,
    )


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Runs to show.")] = 10,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only say whether the last nightly run succeeded and the data is fresh."
        ),
    ] = False,
    max_lag: Annotated[
        float | None,
        typer.Option(
            metavar="HOURS",
            min=0,
            max=24 * 366,
            help="With --check: how old the data may be, in hours (USAGE_MAX_LAG_HOURS, 36).",
        ),
    ] = None,
) -> None:
    """Show runs, coverage, data_through, the definition and the lock; --check: exit 0 or 1.

    Example: usage status --check --max-lag 36
    """
    settings = settings_of(ctx)
    if check:
        with databases(settings) as dbs:
            lag = timedelta(hours=settings.max_lag_hours if max_lag is None else max_lag)
            fresh, line = freshness.check(dbs, utcnow(), lag)
        out.print(line, markup=False, soft_wrap=True)
        raise typer.Exit(0 if fresh else 1)
    with databases(settings) as dbs:
        report = status_report(dbs, settings, utcnow(), limit)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    cover = report["coverage"]
    gaps = ", ".join(f"{a} to {b}" for a, b in cover["gaps"]) or "none"
    served = report["definition"]
    out.print(
        f"database {report['database']}  data through {report['data_through'] or 'never'}"
        f"  lag {report['lag_days'] if report['lag_days'] is not None else '-'} days"
        f"  lock {report['lock'] or 'free'}",
        markup=False,
    )
    out.print(
        f"generation {report['generation']}  definition {served['fingerprint'] if served else '-'}"
        f"  computed {cover['first'] or '-'} to {cover['last'] or '-'} ({cover['days']} days)"
        f"  gaps {gaps}",
        markup=False,
    )
    for line in report["warnings"]:
        out.print(f"warning: {line}", markup=False)
    table = Table("started (UTC)", "kind", "status", "range", "days", "rows", "skipped", "error")
    for run in report["runs"]:
        cells = [
            str(run.get("started_at", ""))[:19],
            run.get("kind", ""),
            run.get("status", ""),
            " to ".join(run.get("range") or []),
            str(run.get("days_recomputed", "")),
            str(run.get("rows_written", "")),
            str(sum((run.get("skipped") or {}).values())),
            (run.get("error") or "")[:60],
        ]
        table.add_row(*map(Text, cells))
    out.print(table)


def status_report(dbs: Databases, settings: Settings, now: datetime, limit: int) -> dict[str, Any]:
    from etl.definition import differences, of_settings

    state = ledger.read_state(dbs.rollup)
    generation = state.generation if state else 1
    through = ledger.data_through(dbs, state)
    today = rollup.local_today(now, settings)
    lock = runs.current_lock(dbs.rollup)
    lock_text = None
    if lock:
        state_text = "expired" if lock["expires_at"] < now else "held"
        lock_text = (
            f"{state_text} by {lock['holder']} until {lock['expires_at']:%Y-%m-%d %H:%M:%S} UTC"
        )
    warnings = []
    if state is not None:
        changes = differences(state.definition, of_settings(settings))
        if changes:
            warnings.append(
                "the settings differ from the served definition ("
                + "; ".join(changes)
                + "): runs refuse to write until `usage rebuild`"
            )
        if state.pending is not None:
            warnings.append(
                f"a rebuild into generation {state.pending.generation} has not finished: "
                "run `usage rebuild` again"
            )
        stale = rollup.stale_months(dbs, generation)
        if stale:
            warnings.append(
                f"levels by month lag their days in {', '.join(stale)}: a run replacing them "
                "in parts is running or was cut short; views read their days, and the next "
                "run derives them"
            )
        if not state.platform:
            warnings.append(
                "the served generation was written before the platform level: platform views "
                "read its organization rows, slower with many organizations, until `usage rebuild`"
            )
    return {
        # The embedded server's address dies with this command: name its storage instead.
        "database": (
            f"embedded ({settings.data_dir})"
            if settings.mongodb_uri == EMBEDDED
            else mask_uri(dbs.uri)
        ),
        "timezone": settings.timezone,
        "generation": generation,
        "definition": state.definition.as_doc() if state else None,
        "pending_generation": state.pending.generation if state and state.pending else None,
        "platform_level": state.platform if state else None,
        "coverage": ledger.coverage(dbs, generation).as_doc(),
        "data_through": through.isoformat() if through else None,
        "lag_days": (today - through).days - 1 if through else None,
        "lock": lock_text,
        "warnings": warnings,
        "runs": [runs.run_summary(run) for run in runs.recent_runs(dbs.rollup, limit)],
    }


@app.command(name="verify")
def verify_command(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD, inclusive.")],
    repair: Annotated[bool, typer.Option("--repair", help="Recompute drifted days.")] = False,
) -> None:
    """Recount a range from the source and compare it with the rollup; exit 1 on drift.

    Example: usage verify --start 2026-10-01 --end 2026-10-31
    """
    first, last = parse_range(start, end)
    with databases(settings_of(ctx)) as dbs:
        found = runner.verify_range(
            dbs, first, last, dbs.server_time(), dbs.server_time, repair=repair
        )
    for item in found.drift:
        out.print(item.describe(), markup=False)
    for month in found.months:
        if month in found.stale:
            why = (
                "its levels by month lag its days: a run replacing it in parts is running or "
                "was cut short (views read its days; the next run derives it)"
            )
        else:
            why = "a level differs from what its day rows derive"
        out.print(f"{month}: {why}", markup=False)
    drifted = {item.day for item in found.drift}
    for day in found.damaged:
        if day.isoformat() not in drifted:
            out.print(f"{day}: a day row's users sketch is damaged", markup=False)
    if found.uncovered:
        out.print(
            f"{len(found.uncovered)} days never computed, not compared "
            f"({found.uncovered[0]} to {found.uncovered[-1]}); `usage backfill` covers them",
            markup=False,
        )
    if found.repair is not None:
        print_result(found.repair, "repair")
    if not found.drift and not found.months:
        out.print(f"no drift from {first} to {last}")
    elif found.repair is None:
        days = len({item.day for item in found.drift})
        out.print(
            f"{len(found.drift)} rows differ on {days} days; {len(found.months)} months differ"
        )
        raise typer.Exit(1)


@app.command()
def indexes(
    ctx: typer.Context,
    apply: Annotated[bool, typer.Option("--apply", help="Create missing indexes.")] = False,
) -> None:
    """Show, and with --apply create, the recommended indexes on the source.

    Example: usage indexes --apply
    """
    from etl import indexes as source_indexes

    with databases(settings_of(ctx)) as dbs:
        for line in source_indexes.report(dbs, apply):
            out.print(line, markup=False)


@app.command()
def scheduler(
    jobs_file: Annotated[Path, typer.Option("--jobs", help="Jobs file.")] = Path("jobs.toml"),
    check: Annotated[bool, typer.Option("--check", help="Validate and list, then exit.")] = False,
) -> None:
    """Run the jobs of jobs.toml on their cron schedules until SIGTERM.

    Example: usage scheduler --jobs jobs.toml
    """
    from etl import schedule

    try:
        specs = schedule.load_jobs(jobs_file)
    except schedule.JobsFileError as exc:
        fail(str(exc), EXIT_USAGE)
    sched = schedule.build_scheduler(specs)
    for spec in specs:
        out.print(f"job {spec.name}: {spec.ref} at {spec.trigger}", markup=False)
    if not check:
        schedule.run_forever(sched)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the usage API and dashboard.

    Example: usage serve --host 0.0.0.0 --port 8000
    """
    from api.server import serve_forever

    settings = settings_of(ctx)
    # A database down at start is no reason not to serve: the API answers 503 meanwhile and
    # serves as soon as it answers, as it does when the database goes down later.
    with databases(settings, serving=True) as dbs, contextlib.suppress(KeyboardInterrupt):
        serve_forever(dbs, host, port)  # stopping a server is no interruption to redo


@app.command()
def demo(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port for the API and dashboard.")] = 8000,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Stop after the table.")] = False,
    profile: Annotated[
        ProfileName | None,
        typer.Option(
            help="Source profile of the sample; tiledesk uses databases named with _vanilla."
        ),
    ] = None,
) -> None:
    """Load sample data into the embedded server, roll it up, print a table, serve the API.

    Example: usage demo --port 8000 --profile tiledesk
    """
    from etl import demo as demo_run

    settings = demo_run.demo_settings(settings_of(ctx), profile)
    with databases(settings) as dbs:
        demo_run.run(dbs, out, progress_bar, utcnow(), port, serve=not no_serve)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    staff: Annotated[bool, typer.Option("--staff", help="A platform staff key.")] = False,
    org: Annotated[str | None, typer.Option(help="Organization id of a customer key.")] = None,
) -> None:
    """Create an API key and print it once.

    Example: usage keys create --org 65e18830a0616000137bb854 --name "GIC dashboard"
    """
    from api import auth

    if not name.strip():
        raise typer.BadParameter("say who or what the key is for", param_hint="--name")
    if staff == (org is not None):
        raise typer.BadParameter("give exactly one of --staff or --org ORG_ID", param_hint="--org")
    if org is not None and not auth.is_object_id(org):
        raise typer.BadParameter(f"{org!r} is not an ObjectId hex string", param_hint="--org")
    settings = settings_of(ctx)
    org_id = org.lower() if org else None
    with databases(settings) as dbs:
        collection = settings.org_names
        if org_id is not None and not auth.org_exists(dbs.source, collection, org_id):
            err.print(
                f"warning: no organization {org_id} in {settings.source_db}.{collection}; "
                "creating the key anyway",
                markup=False,
                soft_wrap=True,
            )
        if org_id is not None and org_id in {i.lower() for i in settings.internal_org_ids}:
            err.print(
                f"warning: {org_id} is an internal organization (USAGE_INTERNAL_ORG_IDS): "
                "its key sees no usage of its own; creating the key anyway",
                markup=False,
                soft_wrap=True,
            )
        key_id, secret = auth.create_key(dbs.rollup, name.strip(), org_id, utcnow())
    out.print(f"key id {key_id}; the key (shown once): {secret}", markup=False)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List API keys (never the keys themselves).

    Example: usage keys list
    """
    from api import auth

    with databases(settings_of(ctx)) as dbs:
        keys = auth.list_keys(dbs.rollup)
    table = Table("key id", "name", "scope", "created (UTC)", "revoked")
    for key in keys:
        cells = [
            key["key_id"],
            key["name"],
            f"org {key['org_id']}" if key["org_id"] else "staff",
            f"{key['created_at']:%Y-%m-%d %H:%M}",
            f"{key['revoked_at']:%Y-%m-%d %H:%M}" if key.get("revoked_at") else "",
        ]
        table.add_row(*map(Text, cells))
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The key id.")]
) -> None:
    """Revoke an API key; calls with it get 401 from then on.

    Example: usage keys revoke k_3f9a1c2b
    """
    from api import auth

    with databases(settings_of(ctx)) as dbs:
        if not auth.revoke_key(dbs.rollup, key_id, utcnow()):
            fail(f"no active key with id {key_id!r}", code=2)
    out.print(f"revoked {key_id}", markup=False)


def stop_on_sigterm(signum: int, frame: object) -> NoReturn:
    """SIGTERM (kill, a service manager stopping) ends a run as Ctrl-C does: recorded as
    failed, the lock released, so running the command again goes on at once."""
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: usage errors print one line and exit 2, never a traceback."""
    logs.configure(None)  # for a person until the settings say otherwise
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        code = app(standalone_mode=False)
        if code == EXIT_INTERRUPTED:  # Typer answers Ctrl-C by returning 130, not raising
            raise KeyboardInterrupt
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        err.print("aborted")
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        err.print("interrupted; run the same command again to finish")
        code = EXIT_INTERRUPTED
    except typer.TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"error: {message}", markup=False, soft_wrap=True)
        code = getattr(exc, "exit_code", EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
