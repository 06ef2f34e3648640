"""Benchmarks: the rollup and the usage API against the direct-query baseline.

Run with `make bench` (or `python -m tests.bench.bench --size standard`). The database server
runs in its own process so that the ETL's CPU time and memory are its own. Prints one table of
figures, targets and pass/short, and writes the same as JSON.
"""

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from api import auth
from api.auth import Principal
from api.usage import UsageService, resolve_query
from etl import indexes, rollup, sample, source
from etl.db import Databases, connect
from etl.jobs import utcnow
from etl.settings import Settings

SIZES = {"small": sample.SMALL, "standard": sample.STANDARD}
STAFF = Principal("bench", "bench", None)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(storage: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = shutil.which("secantusd-py", path=str(Path(sys.executable).parent)) or "secantusd-py"
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--storage-path", str(storage), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connect(Settings(mongodb_uri=uri), uri).ping()
            return proc, uri
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the database server did not start")


def emit(results: list[tuple[str, float, str, bool | None]], shown: list[int]) -> None:
    for name, value, target, ok in results[shown[0] :]:
        verdict = "" if ok is None else ("pass" if ok else "short")
        print(f"{name:<34}{value:>12.3f}  {target:<10}{verdict}", flush=True)
    shown[0] = len(results)


def median_ms(func: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def baseline(dbs: Databases, query: Any) -> dict[str, int]:
    """The earlier dashboard: aggregate `requests` directly with the billable filter."""
    settings = dbs.settings
    first, last = source.utc_range(query.first, query.last, settings.zone)
    match: dict[str, Any] = {"createdAt": {"$gte": first, "$lt": last}}
    match.update(source.billable_match(settings))
    pipeline = [
        {"$match": match},
        {"$project": {"org": {"$toString": "$id_organization"}, "agent": "$attributes.bot_id"}},
    ]
    if query.org_id:
        pipeline.append({"$match": {"org": query.org_id}})
    group = "$org" if query.scope == "platform" else "$agent"
    pipeline.append({"$group": {"_id": group, "n": {"$sum": 1}}})
    out = {}
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
    rows = report["rows"]
    return {
        row["id"]: row["totals"]["conversations"] for row in rows if row["totals"]["conversations"]
    }


def http_load(base: str, key: str, paths: list[str], clients: int, seconds: float) -> list[float]:
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        mine = []
        i = n
        while time.monotonic() < stop:
            started = time.perf_counter()
            conn.request("GET", paths[i % len(paths)], headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
            i += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def wait_for_http(base: str, timeout: float = 60.0) -> None:
    host, port = base.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/api/ping")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the API server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    spec = SIZES[args.size]
    workdir = Path(tempfile.mkdtemp(prefix="usage-bench-"))
    proc, uri = start_server(workdir / "db")
    results: list[tuple[str, float, str, bool | None]] = []
    shown = [0]
    try:
        now = utcnow()
        settings = Settings(mongodb_uri=uri, source_db="bench", cache_check_seconds=3600)
        dbs = connect(settings, uri)
        made = sample.make_sample(spec)
        dbs.settings = settings = settings.model_copy(
            update={"internal_org_ids": made.internal_ids}
        )
        started = time.perf_counter()
        count = sample.load_sample(dbs, spec, now)
        print(f"loaded {count} requests in {time.perf_counter() - started:.1f}s", flush=True)
        indexes.report(dbs, apply=True)
        today = rollup.local_today(now, settings)
        first = today - timedelta(days=spec.days)
        last = today - timedelta(days=1)

        # Backfill in a child process: its wall time, CPU time and peak memory.
        env = {
            **os.environ,
            "USAGE_MONGODB_URI": uri,
            "USAGE_SOURCE_DB": "bench",
            "USAGE_INTERNAL_ORG_IDS": json.dumps(made.internal_ids),
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "etl.cli",
                "backfill",
                "--start",
                str(first),
                "--end",
                str(last),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rss_mb = after.ru_maxrss / 1024
        # The floor: the bare aggregation and bulk write of the same rows, measured alone.
        started = time.perf_counter()
        scratch = dbs.rollup["bench_scratch"]
        batch: list[dict[str, Any]] = []
        pipeline = source.rollup_pipeline(first, last, settings)
        for doc in dbs.requests().aggregate(pipeline, allowDiskUse=True):
            batch.append({"k": doc["_id"], "c": doc["conversations"]})
        if batch:
            scratch.insert_many(batch)
        floor = time.perf_counter() - started
        scratch.drop()
        results += [
            ("backfill wall (s)", wall, "", None),
            ("backfill CPU share of wall", cpu / wall, "<= 0.15", cpu / wall <= 0.15),
            ("backfill wall / bare agg+write", wall / floor, "<= 1.3", wall / floor <= 1.3),
            ("backfill peak RSS (MB)", rss_mb, "<= 150", rss_mb <= 150),
        ]
        emit(results, shown)
        rollup.run_nightly(dbs, utcnow(), utcnow)

        # The dashboard mix: rollup (warm and cold) against the baseline.
        org = made.organizations[spec.internal]
        org_id = str(org["_id"])
        agent_id = str(made.bots_of(org["_id"])[0]["_id"])
        mix = [
            {"scope": "platform"},
            {
                "scope": "org",
                "org_id": org_id,
                "start": str(first.replace(day=1) + timedelta(days=31)),
                "end": str(last),
            },
            {"scope": "org", "org_id": org_id},
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
        queries = [
            resolve_query(
                scope=m["scope"],
                org_id=m.get("org_id"),
                agent_id=m.get("agent_id"),
                start=m.get("start"),
                end=m.get("end"),
                granularity="auto",
                include_internal=False,
                principal=STAFF,
                today=today,
                settings=settings,
            )
            for m in mix
        ]
        service = UsageService(dbs, 3600)
        for query in queries:
            report = service.report(query, service.freshness())
            direct = baseline(dbs, query)
            assert rollup_totals(report) == direct, f"rollup and baseline disagree for {query}"
        base_ms = median_ms(lambda: [baseline(dbs, q) for q in queries], max(3, args.runs // 2))
        warm_ms = median_ms(lambda: [service.report_json(q) for q in queries], args.runs)
        cold_ms = median_ms(lambda: UsageService(dbs, 0).report_json(queries[0]), args.runs)
        base_platform = median_ms(lambda: baseline(dbs, queries[0]), max(3, args.runs // 2))
        results += [
            ("mix baseline (ms)", base_ms, "", None),
            ("mix warm (ms)", warm_ms, "", None),
            ("mix warm speed-up", base_ms / warm_ms, ">= 100", base_ms / warm_ms >= 100),
            ("platform cold p50 (ms)", cold_ms, "<= 200", cold_ms <= 200),
            (
                "platform cold speed-up",
                base_platform / cold_ms,
                ">= 10",
                base_platform / cold_ms >= 10,
            ),
        ]
        emit(results, shown)

        # Over HTTP: 16 clients against a real server process.
        port = free_port()
        key = auth.create_key(dbs.rollup, "bench", None, now)[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "etl.cli", "serve", "--port", str(port)],
            env={**env, "USAGE_CACHE_CHECK_SECONDS": "2"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(base)
            paths = [
                "/api/aggregations/usage?" + "&".join(f"{k}={v}" for k, v in m.items()) for m in mix
            ]
            http_load(base, key, paths, 4, 1.0)  # warm the cache
            latencies = http_load(base, key, paths, 16, args.seconds)
            floor_lat = http_load(base, key, ["/api/ping"], 1, 3.0)
            warm_one = http_load(base, key, paths[:1], 1, 3.0)
        finally:
            server.terminate()
            server.wait(timeout=20)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        floor_ratio = statistics.median(warm_one) / statistics.median(floor_lat)
        results += [
            ("http 16 clients p50 (ms)", p50, "<= 5", p50 <= 5),
            ("http 16 clients p99 (ms)", p99, "<= 25", p99 <= 25),
            ("http requests served", float(len(latencies)), "", None),
            ("warm usage / trivial endpoint", floor_ratio, "<= 2", floor_ratio <= 2),
        ]
        emit(results, shown)
        dbs.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'figure':<34}{'value':>12}  {'target':<10}result")
    emit(results, [0])
    args.out.mkdir(exist_ok=True)
    report_path = args.out / f"bench-{args.size}.json"
    report_path.write_text(
        json.dumps(
            {
                "size": args.size,
                "requests": count,
                "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
                "when": datetime.now().isoformat(timespec="seconds"),
                "figures": [
                    {"name": n, "value": v, "target": t, "pass": ok} for n, v, t, ok in results
                ],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {report_path}")


if __name__ == "__main__":
    main()
