"""Benchmarks: the rollup and the usage API against the direct-query baseline.

Run with `make bench` (standard dataset), `make bench SIZE=small` or `make bench SIZE=large`
(10,000 organizations over twelve months, see `tests/bench/large.py`; it also measures the
standard dataset in the same run, for the figures that are ratios to it). The database server
and the API server run in processes of their own, so the ETL's CPU time and memory are its own.
Prints each figure with its target as it is measured, then one table, and writes the same as
JSON to bench-results/. Exits 1 when any figure is short of its target.
"""

import argparse
import functools
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from api import auth, platform_view
from api.auth import Principal
from api.buckets import default_range, make_buckets
from api.usage import (
    UsageQuery,
    UsageService,
    fetch_groups,
    fetch_names,
    resolve_query,
)
from etl import indexes, rollup, runner, sample, source, vanilla_sample
from etl.db import Databases, connect
from etl.jobs import utcnow
from etl.settings import Settings
from tests.bench import large
from tests.conftest import free_port
from tests.drills.conftest import ServerProcess

Spec = sample.SampleSpec | large.LargeSpec
SIZES: dict[str, Spec] = {"small": sample.SMALL, "standard": sample.STANDARD, "large": large.LARGE}
# The API's default page: what the dashboard asks for first.
PAGE = 50
STAFF = Principal("bench", "bench", None)
Figure = tuple[str, float, str, bool | None]

# Runs `usage` in a child that reports its own wall time (from after imports), CPU time and
# peak memory to the file named by its first argument.
LAUNCHER = """
import atexit, json, resource, sys, time
out = sys.argv.pop(1)
from etl import cli
started = time.perf_counter()
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w") as f:
        json.dump({"wall": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
                   "rss_mb": usage.ru_maxrss / 1024}, f)
atexit.register(report)
cli.main()
"""


class Bench:
    def __init__(self) -> None:
        self.figures: list[Figure] = []

    def add(self, name: str, value: float, target: str = "", ok: bool | None = None) -> None:
        self.figures.append((name, value, target, ok))
        verdict = "" if ok is None else ("PASS" if ok else "SHORT")
        print(f"{name:<40}{value:>12.3f}  {target:<9}{verdict}", flush=True)

    def short(self) -> list[str]:
        return [name for name, _, _, ok in self.figures if ok is False]


def made_of(spec: Spec) -> sample.Sample:
    if isinstance(spec, large.LargeSpec):
        return large.make_large(spec)[0]
    return sample.make_sample(spec)


def run_child(args: list[str], env: dict[str, str]) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        child = subprocess.run(
            [sys.executable, "-c", LAUNCHER, report.name, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if child.returncode != 0:
            # The command's own one line says why; the bench stops with it.
            sys.exit(f"bench: usage {' '.join(args)} exited {child.returncode}: {child.stderr}")
        return json.loads(Path(report.name).read_text())  # type: ignore[no-any-return]


def median_ms(func: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def prepare(uri: str, db: str, spec: Spec, now: datetime) -> Databases:
    made = made_of(spec)
    settings = Settings(
        mongodb_uri=uri, source_db=db, internal_org_ids=made.internal_ids, cache_check_seconds=3600
    )
    dbs = connect(settings, uri)
    started = time.perf_counter()
    if isinstance(spec, large.LargeSpec):
        count = large.load(dbs, spec, now)
    else:
        count = sample.load_sample(dbs, spec, now)
    loaded = time.perf_counter()
    # Indexes after the load: building each once is faster than maintaining it per insert.
    indexes.report(dbs, apply=True)
    print(
        f"{db}: loaded {count} requests in {loaded - started:.1f}s, "
        f"indexed in {time.perf_counter() - loaded:.1f}s",
        flush=True,
    )
    return dbs


def env_of(dbs: Databases) -> dict[str, str]:
    return {
        **os.environ,
        "USAGE_MONGODB_URI": dbs.uri,
        "USAGE_SOURCE_DB": dbs.settings.source_db,
        "USAGE_INTERNAL_ORG_IDS": json.dumps(dbs.settings.internal_org_ids),
    }


def backfill_child(dbs: Databases, first: Any, last: Any) -> dict[str, float]:
    args = ["backfill", "--start", str(first), "--end", str(last)]
    return run_child(args, env_of(dbs))


def bare_floor(dbs: Databases, first: Any, last: Any) -> float:
    """The aggregation and a bulk write of the same rows into an identically indexed
    collection, with nothing else: what a backfill cannot go below."""
    scratch = dbs.rollup["bench_floor"]
    scratch.drop()
    for info in dbs.usage_daily().list_indexes():
        if info["name"] != "_id_":
            scratch.create_index(list(info["key"].items()), unique=info.get("unique", False))
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    for doc in dbs.requests().aggregate(
        source.rollup_pipeline(first, last, dbs.settings), allowDiskUse=True
    ):
        key = doc["_id"]
        if key.get("skip"):
            continue
        batch.append(
            {
                "_id": rollup.row_id(key["org"], key["agent"], key["day"]),
                "org_id": key["org"],
                "agent_id": key["agent"],
                "day": key["day"],
                **{name: int(doc[name]) for name in rollup.MEASURES},
                **rollup.users_fields(doc.get("users") or []),
            }
        )
        if len(batch) >= 5000:
            scratch.insert_many(batch, ordered=False)
            batch = []
    if batch:
        scratch.insert_many(batch, ordered=False)
    elapsed = time.perf_counter() - started
    scratch.drop()
    return elapsed


def baseline(dbs: Databases, query: UsageQuery) -> dict[str, int]:
    """The earlier dashboard: aggregate `requests` directly with the billable filter."""
    settings = dbs.settings
    first, last = source.utc_range(query.first, query.last, settings.zone)
    match: dict[str, Any] = {"createdAt": {"$gte": first, "$lt": last}}
    match.update(source.billable_match(settings))
    pipeline: list[dict[str, Any]] = [
        {"$match": match},
        {"$project": {"org": {"$toString": "$id_organization"}, "agent": "$attributes.bot_id"}},
    ]
    if query.org_id:
        pipeline.append({"$match": {"org": query.org_id}})
    group = "$org" if query.scope == "platform" else "$agent"
    pipeline.append({"$group": {"_id": group, "n": {"$sum": 1}}})
    out: dict[str, int] = {}
    for doc in dbs.requests().aggregate(pipeline, allowDiskUse=True):
        key = str(doc["_id"]).lower() if doc["_id"] else "unattributed"
        if query.scope == "platform" and (
            key in settings.internal_org_ids or not auth.is_object_id(key)
        ):
            continue
        if query.agent_id and key != query.agent_id:
            continue
        out[key] = out.get(key, 0) + int(doc["n"])
    return out


def rollup_totals(report: dict[str, Any]) -> dict[str, int]:
    totals = {row["id"]: row["totals"]["conversations"] for row in report["rows"]}
    return {key: value for key, value in totals.items() if value}


def dashboard_mix(today: Any, spec: Spec) -> list[dict[str, str]]:
    made = made_of(spec)
    org = made.organizations[spec.internal]
    org_id = str(org["_id"])
    agent_id = str(made.bots_of(org["_id"])[0]["_id"])
    six_first, six_last = default_range("platform", today)
    return [
        {"scope": "platform"},
        {"scope": "org", "org_id": org_id, "start": str(six_first), "end": str(six_last)},
        {
            "scope": "org",
            "org_id": org_id,
            "start": str(today - timedelta(days=29)),
            "end": str(today),
        },
        {
            "scope": "agent",
            "org_id": org_id,
            "agent_id": agent_id,
            "start": str(today - timedelta(days=6)),
            "end": str(today),
        },
        {
            "scope": "platform",
            "start": str(today - timedelta(days=45)),
            "end": str(today - timedelta(days=10)),
        },
    ]


def to_query(params: dict[str, str], today: Any, settings: Settings) -> UsageQuery:
    return resolve_query(
        scope=params["scope"],  # type: ignore[arg-type]
        org_id=params.get("org_id"),
        agent_id=params.get("agent_id"),
        start=params.get("start") or None,
        end=params.get("end") or None,
        granularity="auto",
        include_internal=False,
        principal=STAFF,
        today=today,
        settings=settings,
    )


def wrk_latency(
    url: str, key: str, paths: list[str], clients: int, seconds: float
) -> dict[str, float]:
    """p50 and p99 in ms and requests served, by wrk with a script rotating over `paths`."""
    script = "\n".join(
        [
            "local paths = {" + ",".join(json.dumps(p) for p in paths) + "}",
            "local i = 0",
            f'wrk.headers["Authorization"] = "Bearer {key}"',
            "request = function() i = i + 1; return wrk.format(nil, paths[(i % #paths) + 1]) end",
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        threads = min(clients, 2)
        result = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(clients),
                "-d",
                f"{max(1, round(seconds))}s",
                "--latency",
                "-s",
                lua.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    text = result.stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        assert match, text
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    served = re.search(r"(\d+) requests in", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    assert not errors, f"wrk saw errors: {text}"
    return {"p50": ms("50%"), "p99": ms("99%"), "requests": float(served.group(1)) if served else 0}


def wait_for_http(host: str, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/api/ping")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the API server did not start")


def identity(value: datetime) -> datetime:
    return value


@dataclass(frozen=True)
class NightlyCost:
    """A nightly run's median seconds per day it recomputed, and per thousand conversations
    it counted in them (what the large and standard datasets' daily volumes do to it)."""

    per_day: float
    per_thousand: float


def median_cost(results: list[tuple[float, runner.RunResult]]) -> NightlyCost:
    return NightlyCost(
        statistics.median(elapsed / max(result.stats.days, 1) for elapsed, result in results),
        statistics.median(
            1000 * elapsed / max(result.stats.conversations, 1) for elapsed, result in results
        ),
    )


def nightly_seconds(dbs: Databases, now: datetime, runs: int) -> float:
    return nightly_per_day(dbs, now, runs)[0]


def nightly_per_day(dbs: Databases, now: datetime, runs: int) -> tuple[float, NightlyCost]:
    """The nightly run's median seconds, and its cost, over days whose documents did not
    change since the run before."""
    runner.run_nightly(dbs, now, lambda: now)
    results = []
    for n in range(runs):
        later = now + timedelta(minutes=30 * (n + 1))
        started = time.perf_counter()
        result = runner.run_nightly(dbs, later, functools.partial(identity, later))
        results.append((time.perf_counter() - started, result))
    return statistics.median(elapsed for elapsed, _ in results), median_cost(results)


def nightly_after_a_day(dbs: Databases, now: datetime, runs: int) -> NightlyCost:
    """The nightly run's median cost when yesterday's conversations are
    new to it, as every night: yesterday's documents are set aside and a nightly run drops
    their rows, then they are put back and the run measured recomputes them."""
    settings = dbs.settings
    yesterday = rollup.local_today(now, settings) - timedelta(days=1)
    first, last = source.utc_range(yesterday, yesterday, settings.zone)
    of_yesterday = {"createdAt": {"$gte": first, "$lt": last}}
    requests = dbs.requests()
    results = []
    for n in range(runs):
        docs = list(requests.find(of_yesterday))
        requests.delete_many(of_yesterday)
        before = now + timedelta(hours=n + 1)
        runner.run_nightly(dbs, before, functools.partial(identity, before))
        requests.insert_many(docs)
        later = before + timedelta(minutes=30)
        started = time.perf_counter()
        result = runner.run_nightly(dbs, later, functools.partial(identity, later))
        results.append((time.perf_counter() - started, result))
    return median_cost(results)


def plan_stages(plan: Any) -> str:
    stages = []
    while isinstance(plan, dict):
        stage = plan.get("stage", "?")
        stages.append(f"{stage}({plan['indexName']})" if "indexName" in plan else stage)
        plan = plan.get("inputStage")
    return " <- ".join(stages)


def show_plans(dbs: Databases, now: datetime) -> None:
    today = rollup.local_today(now, dbs.settings)
    shapes = {
        "window": source.rollup_pipeline(today - timedelta(days=3), today, dbs.settings),
        "changed days": source.changed_days_pipeline(now - timedelta(hours=1), today, dbs.settings),
        "unplaceable count": source.bad_created_at_pipeline(dbs.settings, now - timedelta(hours=1)),
    }
    for name, pipeline in shapes.items():
        explained = dbs.source.command(
            "explain", {"aggregate": "requests", "pipeline": pipeline, "cursor": {}}
        )
        planner = explained.get("queryPlanner") or explained.get("stages", [{}])[0].get(
            "$cursor", {}
        ).get("queryPlanner", {})
        print(
            f"plan of the nightly {name} query: {plan_stages(planner.get('winningPlan'))}",
            flush=True,
        )


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="standard")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        # Every figure or none: a benchmark without its HTTP figures must not read as a pass.
        sys.exit("error: the benchmark needs wrk: as root, apt-get install -y wrk")
    bench = Bench()
    workdir = Path(tempfile.mkdtemp(prefix="usage-bench-"))
    database = ServerProcess(workdir / "db")
    database.start()
    try:
        measure(bench, database.uri, args.size, args)
    finally:
        database.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'figure':<40}{'value':>12}  {'target':<9}result")
    for name, value, target, ok in bench.figures:
        verdict = "" if ok is None else ("PASS" if ok else "SHORT")
        print(f"{name:<40}{value:>12.3f}  {target:<9}{verdict}")
    args.out.mkdir(exist_ok=True)
    path = args.out / f"bench-{args.size}.json"
    path.write_text(
        json.dumps(
            {
                "size": args.size,
                "machine": machine(),
                "when": datetime.now().isoformat(timespec="seconds"),
                "figures": [
                    {"name": n, "value": round(v, 4), "target": t, "pass": ok}
                    for n, v, t, ok in bench.figures
                ],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {path}")
    short = bench.short()
    if short:
        print(f"{len(short)} short of target: {', '.join(short)}", file=sys.stderr)
        sys.exit(1)


@dataclass(frozen=True)
class Targets:
    cold_ms: float
    rss_mb: float


TARGETS = {
    "small": Targets(cold_ms=200, rss_mb=150),
    "standard": Targets(cold_ms=200, rss_mb=150),
    "large": Targets(cold_ms=300, rss_mb=200),
}
MAX_BODY_KB = 150
# Large against standard, measured in the same run.
MAX_COLD_RATIO = 3.0
MAX_NIGHTLY_RATIO = 1.5


def first_page(query: UsageQuery) -> UsageQuery:
    return replace(query, limit=PAGE, offset=0)


def cold_ms(dbs: Databases, query: UsageQuery, runs: int) -> float:
    """A report computed after a run: nothing cached, the served state read again."""

    def cold_view() -> bytes:
        fresh = UsageService(dbs, 0)
        return fresh.report_json(query, fresh.served())

    return median_ms(cold_view, runs)


def cold_breakdown(bench: Bench, dbs: Databases, query: UsageQuery, runs: int) -> None:
    """What a cold platform view's steps cost, each the median of `runs` (no targets): the
    platform level it reads, against the organization rows it read before that level."""
    settings = dbs.settings
    service = UsageService(dbs, 0)
    served = service.served()
    buckets = make_buckets(query.first, query.last, query.granularity, settings.week_start_index)
    placed = platform_view.read(dbs, buckets, query.granularity == "month", served.generation)
    page = service.platform_page(query, served)[1]
    page_ids = [line.id for line in page.rows if line.id]
    body = service.report_json(query, served)
    bench.add("cold: platform level documents read", len(placed))
    bench.add("cold: organizations in them", len({org for _, doc in placed for org in doc["orgs"]}))
    bench.add("cold: served state (ms)", median_ms(lambda: UsageService(dbs, 0).served(), runs))
    bench.add(
        "cold: platform level read (ms)",
        median_ms(
            lambda: platform_view.read(
                dbs, buckets, query.granularity == "month", served.generation
            ),
            runs,
        ),
    )
    bench.add(
        "cold: page, Other and total from it (ms)",
        median_ms(lambda: service.platform_page(query, served), runs),
    )
    bench.add(
        "cold: names of the page (ms)",
        median_ms(lambda: fetch_names(dbs.source, settings.org_names, page_ids), runs),
    )
    report = service.report(query, served)
    bench.add(
        "cold: JSON encoding (ms)",
        median_ms(lambda: json.dumps(report, separators=(",", ":")).encode(), runs),
    )
    bench.add("cold: body (KB)", len(body) / 1024)
    groups = fetch_groups(dbs, query, buckets, served.generation, True, True)
    bench.add("cold, before the platform level: organization rows", len(groups))
    bench.add(
        "cold, before the platform level: their $group (ms)",
        median_ms(lambda: fetch_groups(dbs, query, buckets, served.generation, True, True), 1),
    )


def body_kb(url: str, key: str, path: str) -> float:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body[:300]
        return len(body) / 1024
    finally:
        conn.close()


def measure(bench: Bench, uri: str, size: str, args: argparse.Namespace) -> None:
    spec, targets = SIZES[size], TARGETS[size]
    is_large = isinstance(spec, large.LargeSpec)
    # The baseline scans `requests` for every view: once is enough to compare on a large one.
    baseline_runs = 1 if is_large else 3
    now = utcnow()
    dbs = prepare(uri, "bench", spec, now)
    settings = dbs.settings
    today = rollup.local_today(now, settings)
    first, last = today - timedelta(days=spec.days), today - timedelta(days=1)

    # 4 and 6: the backfill of the whole sample, in a child process of its own.
    child = backfill_child(dbs, first, last)
    floor = bare_floor(dbs, first, last)
    bench.add("backfill wall (s)", child["wall"])
    bench.add("backfill bare aggregation + write (s)", floor)
    bench.add(
        "backfill CPU / wall",
        child["cpu"] / child["wall"],
        "<= 0.15",
        child["cpu"] / child["wall"] <= 0.15,
    )
    bench.add("backfill wall / bare", child["wall"] / floor, "<= 1.3", child["wall"] / floor <= 1.3)
    rss = child["rss_mb"]
    bench.add("backfill peak RSS (MB)", rss, f"<= {targets.rss_mb:g}", rss <= targets.rss_mb)
    if spec == sample.STANDARD:
        small = prepare(uri, "bench_small", sample.SMALL, now)
        small_child = backfill_child(small, first, last)
        ratio = child["rss_mb"] / small_child["rss_mb"]
        bench.add("backfill peak RSS standard / small", ratio, "<= 1.2", ratio <= 1.2)
        small.close()
    runner.run_nightly(dbs, utcnow(), utcnow)

    # 1 and 2: the dashboard mix from the rollup (warm and cold) against the baseline.
    mix = dashboard_mix(today, spec)
    queries = [to_query(params, today, settings) for params in mix]
    service = UsageService(dbs, 3600)
    served = service.served()
    keys = [("bench", str(n).encode(), today) for n in range(len(queries))]
    for cache_key, query in zip(keys, queries, strict=True):
        report = service.report(query, served)
        assert rollup_totals(report) == baseline(dbs, query), f"rollup and baseline differ: {query}"
        service.remember(cache_key, served, service.report_json(query, served))
    base_mix = median_ms(lambda: [baseline(dbs, q) for q in queries], baseline_runs)
    warm_mix = median_ms(lambda: [service.cached(key) for key in keys], args.runs)
    bench.add("mix baseline (ms)", base_mix)
    bench.add("mix warm (ms)", warm_mix)
    bench.add("mix warm speed-up", base_mix / warm_mix, ">= 100", base_mix / warm_mix >= 100)

    # The platform view's first page, as the dashboard asks for it (six months, 50 rows).
    platform = first_page(queries[0])
    cold = cold_ms(dbs, platform, args.runs)
    base_platform = median_ms(lambda: baseline(dbs, queries[0]), baseline_runs)
    target = targets.cold_ms
    bench.add("platform view cold p50 (ms)", cold, f"<= {target:g}", cold <= target)
    bench.add(
        "platform view cold speed-up", base_platform / cold, ">= 10", base_platform / cold >= 10
    )
    cold_breakdown(bench, dbs, platform, args.runs)

    # 1 and 3: over HTTP, against a real server process.
    port = free_port()
    key = auth.create_key(dbs.rollup, "bench", None, now)[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "etl.cli", "serve", "--port", str(port)],
        env={**env_of(dbs), "USAGE_CACHE_CHECK_SECONDS": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http("127.0.0.1", port)
        base = f"http://127.0.0.1:{port}"
        paths = [
            "/api/aggregations/usage?" + "&".join(f"{k}={v}" for k, v in m.items() if v)
            for m in mix
        ]
        largest = max(body_kb(base, key, path) for path in paths)
        bench.add(
            "largest usage response (KB)", largest, f"<= {MAX_BODY_KB}", largest <= MAX_BODY_KB
        )
        wrk_latency(base, key, paths, 4, 2)  # warm the cache
        # Three runs, medians taken: one run can land on the database server's own
        # background work (a checkpoint after the loads) on this 2-core machine.
        loads = [wrk_latency(base, key, paths, 16, args.seconds) for _ in range(3)]
        p50 = statistics.median(load["p50"] for load in loads)
        p99 = statistics.median(load["p99"] for load in loads)
        rate = statistics.median(load["requests"] for load in loads) / args.seconds
        print("p99 of the three runs (ms):", [load["p99"] for load in loads], flush=True)
        bench.add("http 16 clients p50 (ms)", p50, "<= 5", p50 <= 5)
        bench.add("http 16 clients p99 (ms)", p99, "<= 25", p99 <= 25)
        bench.add("http 16 clients requests/s", rate)
        trivial = wrk_latency(base, key, ["/api/ping"], 1, 5)["p50"]
        usage = wrk_latency(base, key, paths[:1], 1, 5)["p50"]
        bench.add(
            "warm usage / trivial endpoint (p50)", usage / trivial, "<= 2", usage / trivial <= 2
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    # The nightly run over this dataset: seconds, and its cost by day and by conversation.
    nightly_runs = 3 if is_large else args.runs
    nightly, nothing_new = nightly_per_day(dbs, utcnow(), nightly_runs)
    bench.add("nightly run, nothing new (s)", nightly)
    after_a_day = nightly_after_a_day(dbs, utcnow(), nightly_runs)
    add_nightly(bench, "", nothing_new, after_a_day)
    dbs.close()
    if is_large:
        standard_ratios(bench, uri, now, cold, (nothing_new, after_a_day), args.runs)

    # 5: the nightly run at the same daily volume over 6 and 12 months of history.
    history = replace(sample.SMALL, seed=11)
    short = prepare(uri, "hist6", replace(history, days=183), now)
    long = prepare(uri, "hist12", replace(history, days=365), now)
    show_plans(long, now)
    six, twelve = nightly_seconds(short, now, args.runs), nightly_seconds(long, now, args.runs)
    bench.add("nightly, 6 months of history (s)", six)
    bench.add("nightly, 12 months of history (s)", twelve)
    bench.add("nightly 12 / 6 months", twelve / six, "<= 1.3", twelve / six <= 1.3)
    short.close()
    long.close()
    vanilla_cost(bench, uri, now)


def standard_ratios(
    bench: Bench,
    uri: str,
    now: datetime,
    cold: float,
    large_costs: tuple[NightlyCost, NightlyCost],
    runs: int,
) -> None:
    """The standard dataset in the same server and run: the large figures that are ratios."""
    dbs = prepare(uri, "bench_standard", sample.STANDARD, now)
    today = rollup.local_today(now, dbs.settings)
    started = time.perf_counter()
    days = sample.STANDARD.days
    runner.run_backfill(dbs, today - timedelta(days=days), today - timedelta(days=1), now, utcnow)
    print(f"bench_standard: backfilled in {time.perf_counter() - started:.1f}s", flush=True)
    runner.run_nightly(dbs, utcnow(), utcnow)
    platform = first_page(to_query({"scope": "platform"}, today, dbs.settings))
    standard_cold = cold_ms(dbs, platform, runs)
    _, standard_nothing_new = nightly_per_day(dbs, utcnow(), runs)
    standard_after_a_day = nightly_after_a_day(dbs, utcnow(), runs)
    dbs.close()
    bench.add("standard: platform view cold p50 (ms)", standard_cold)
    add_nightly(bench, "standard: ", standard_nothing_new, standard_after_a_day)
    ratio = cold / standard_cold
    bench.add(
        "platform view cold large / standard",
        ratio,
        f"<= {MAX_COLD_RATIO:g}",
        ratio <= MAX_COLD_RATIO,
    )
    # The target is by the day; by the conversation, the figure says how much of the ratio
    # is the large dataset's greater daily volume, which every nightly run aggregates.
    for name, large_cost, standard in (
        ("nothing new", large_costs[0], standard_nothing_new),
        ("after a day", large_costs[1], standard_after_a_day),
    ):
        ratio = large_cost.per_day / standard.per_day
        bench.add(
            f"nightly per day large / standard, {name}",
            ratio,
            f"<= {MAX_NIGHTLY_RATIO:g}",
            ratio <= MAX_NIGHTLY_RATIO,
        )
        by_conversation = large_cost.per_thousand / standard.per_thousand
        bench.add(f"nightly per conversation large / standard, {name}", by_conversation)


def add_nightly(bench: Bench, prefix: str, nothing_new: NightlyCost, after: NightlyCost) -> None:
    for name, cost in (("nothing new", nothing_new), ("after a day", after)):
        bench.add(f"{prefix}nightly per day recomputed, {name} (s)", cost.per_day)
        bench.add(f"{prefix}nightly per 1,000 conversations, {name} (s)", cost.per_thousand)


def vanilla_cost(bench: Bench, uri: str, now: datetime) -> None:
    """6: the tiledesk profile counts each conversation's messages in the aggregation; its
    backfill against the deployment profile's over the same volume of conversations."""
    spec = replace(sample.SMALL, seed=13)
    deployment = prepare(uri, "bench_deployment", spec, now)
    settings = Settings(
        mongodb_uri=uri,
        source_db="bench_vanilla",
        source_profile="tiledesk",
        cache_check_seconds=3600,
    )
    vanilla = connect(settings, uri)
    started = time.perf_counter()
    count = vanilla_sample.load(vanilla, spec, now)
    print(
        f"bench_vanilla: loaded {count} requests in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    indexes.report(vanilla, apply=True)
    today = rollup.local_today(now, settings)
    first, last = today - timedelta(days=spec.days), today - timedelta(days=1)
    seconds = {}
    for name, dbs in (("deployment", deployment), ("tiledesk", vanilla)):
        started = time.perf_counter()
        runner.run_backfill(dbs, first, last, now, lambda: now)
        seconds[name] = time.perf_counter() - started
        dbs.close()
    bench.add("backfill, deployment profile (s)", seconds["deployment"])
    bench.add("backfill, tiledesk profile (s)", seconds["tiledesk"])
    bench.add("backfill tiledesk / deployment", seconds["tiledesk"] / seconds["deployment"])


if __name__ == "__main__":
    main()
