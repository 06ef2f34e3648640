"""A rebuild of a range never shrinks what is served."""

from collections.abc import Callable
from datetime import date, datetime

from etl import ledger, runner
from etl.db import Databases
from tests.factories import make_request

T0 = datetime(2026, 10, 12, 2, 0)


def at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def test_a_rebuild_of_a_range_keeps_every_computed_day_served(
    make_dbs: Callable[..., Databases],
) -> None:
    old = make_dbs()
    for month in (7, 8, 9):
        old.source.requests.insert_many(
            [make_request(createdAt=datetime(2026, month, 10, 9), depth=d) for d in (3, 4)]
        )
    runner.run_backfill(old, date(2026, 7, 1), date(2026, 9, 30), T0, at(T0))
    deeper = make_dbs(
        billable_min_depth=3,
        source_db=old.settings.source_db,
        rollup_db=old.settings.rollup_db_name,
    )
    # The operator rebuilds only September under the new definition.
    runner.run_rebuild(deeper, T0, at(T0), date(2026, 9, 1), date(2026, 9, 30))
    state = ledger.read_state(deeper.rollup)
    assert state is not None and state.pending is None
    # July and August were computed; they must still be, under the new definition.
    cover = ledger.coverage(deeper, state.generation)
    assert (cover.first, cover.last, cover.gaps) == (date(2026, 7, 1), date(2026, 9, 30), [])
    daily: dict[str, int] = {}
    for row in deeper.usage_daily(state.generation).find():
        daily[row["day"]] = daily.get(row["day"], 0) + row["conversations"]
    assert daily == {"2026-07-10": 1, "2026-08-10": 1, "2026-09-10": 1}
