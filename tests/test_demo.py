"""The demo's table and its end: what it prints, and what it leaves behind."""

import io
from collections.abc import Callable
from datetime import date

from bson import ObjectId
from rich.console import Console

from etl.db import Databases
from etl.demo import print_table
from etl.jobs import utcnow
from tests.commands import env_for, usage
from tests.factories import BOT_1, make_request, make_row, store_rows

ORG_A, ORG_B = "65e18830a0616000137bb854", "65e18830a0616000137bb855"


def test_organization_names_in_the_table_are_text_not_markup(dbs: Databases) -> None:
    rows = [make_row(ORG_A, BOT_1, "2026-10-05", 3), make_row(ORG_B, BOT_1, "2026-09-05", 2)]
    store_rows(dbs, rows)
    dbs.source.organizations.insert_many(
        [
            {"_id": ObjectId(ORG_A), "name": "Northwind [/Retail]"},
            {"_id": ObjectId(ORG_B), "name": "[bold red]Acme[/bold red]"},
        ]
    )
    buffer = io.StringIO()
    print_table(dbs, Console(file=buffer, width=200), date(2026, 11, 25))
    shown = buffer.getvalue()
    assert "Northwind [/Retail]" in shown
    assert "[bold red]Acme[/bold red]" in shown


def test_demo_without_serving_shows_no_address_and_makes_no_key(dbs: Databases) -> None:
    # Data already there: the demo loads and backfills nothing, and only runs the nightly.
    dbs.source.requests.insert_one(make_request(createdAt=utcnow()))
    dbs.usage_daily().insert_one(make_row(ORG_A, BOT_1, "2026-10-05", 3))
    for _ in range(2):
        result = usage("demo", "--no-serve", env=env_for(dbs))
        assert result.returncode == 0, result.stderr
        assert "http://" not in result.stdout
        assert "usage serve" in result.stdout
    assert dbs.rollup.api_keys.count_documents({}) == 0


def test_demo_of_the_tiledesk_profile_without_serving_names_its_databases_for_both_commands(
    make_dbs: Callable[..., Databases],
) -> None:
    """`usage keys create` without them would put the key where `usage serve` never looks."""
    from etl import demo
    from etl.cli import progress_bar

    dbs = make_dbs(source_profile="tiledesk")
    dbs.source.requests.insert_one(make_request(createdAt=utcnow()))  # loaded: nothing to load
    buffer = io.StringIO()
    demo.run(dbs, Console(file=buffer, width=300), progress_bar, utcnow(), 0, serve=False)
    lines = buffer.getvalue().splitlines()
    told = lines.index(next(line for line in lines if line.startswith("not serving")))
    assert "`usage keys create --staff --name NAME`" in lines[told]
    assert lines[told + 1] == (
        "both with: export USAGE_SOURCE_PROFILE=tiledesk"
        f" USAGE_SOURCE_DB={dbs.settings.source_db} USAGE_ROLLUP_DB={dbs.settings.rollup_db_name}"
    )
