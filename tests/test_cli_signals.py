"""A run stopped with SIGTERM records itself and frees the lock, as Ctrl-C does."""

import signal
import subprocess
import time
from datetime import datetime, timedelta

from etl import runs
from etl.db import Databases
from tests.commands import COMMAND, clean_env, env_for
from tests.factories import make_request


def test_a_run_stopped_with_sigterm_is_recorded_and_frees_the_lock(dbs: Databases) -> None:
    day = datetime(2020, 1, 1, 9)
    dbs.source.requests.insert_many(
        [make_request(createdAt=day + timedelta(days=n)) for n in range(0, 2400, 3)]
    )
    env = env_for(dbs, USAGE_LEASE_SECONDS="300")
    with subprocess.Popen(
        [*COMMAND, "backfill", "--start", "2020-01-01", "--end", "2026-07-31"],
        env=clean_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        while dbs.rollup.etl_runs.find_one({"kind": "backfill"}) is None:
            assert proc.poll() is None, "the backfill ended before it was seen"
            time.sleep(0.01)
        time.sleep(0.3)
        assert proc.poll() is None, "the backfill ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    record = dbs.rollup.etl_runs.find_one({"kind": "backfill"})
    assert record is not None and record["status"] == runs.FAILED, record
    assert runs.current_lock(dbs.rollup) is None
    assert "run the same command again" in stderr
