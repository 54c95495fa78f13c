"""`bench/api_latency.py --scale`: a fleet-sized PostgreSQL database (2,000 workers, 10,000 jobs,
1,000,000 trials, 100,000 runtime misses), served by a real `tuner serve`, every page and read
route timed under concurrent clients. It shares api_latency.py's server, identities and best rows,
and takes its options (run directly, this file is `api_latency.py --scale`); results in
bench/results/api_scale.json and .md.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from api_latency import AUTH, CLASSES, CONFIG, RESULTS, identity, serving

SCALE = {"workers": 2_000, "live_workers": 100, "jobs": 10_000, "keys": 5_000, "trials": 1_000_000,
         "big_key_trials": 100_000, "misses": 100_000}


def populate_scale(url: str) -> dict:
    """Fill a PostgreSQL database the size the issue names, in SQL where rows are many (generate_series):
    2,000 workers (100 live), 10,000 jobs of one key each over 5,000 matmul keys, 1,000,000 trials
    (100,000 of them on one key), a current best and a superseded one per key, 100,000 runtime-miss
    rows. Returns what the routes need: a job id, a key hash, the big key's hash and job."""
    from sqlalchemy import text

    from db import store
    from db.session import session_scope, upgrade
    from search_spaces import registry

    upgrade(url)
    spec = registry.get("matmul")
    keys = [spec.make_key({"M": 16 * (1 + i % 64), "N": 1024 + 64 * (i // 64), "K": 4096}, "bfloat16")
            for i in range(SCALE["keys"])]
    with session_scope(url) as s:
        ids = {slug: identity(s, slug) for slug in CLASSES}
        old = {"driver": "550.1", "runtime": "cuda-12.4", "triton": "3.5.0", "torch": "2.12.0"}
        old_fp = store.get_or_create_fingerprint(s, hash="oldstack00000000", **old, fields=old).id
        dc_ids = [ids[c][0] for c in CLASSES]
        s.execute(text(
            "INSERT INTO workers (name, hostname, pid, device, device_class_id, fingerprint_id, started_at, "
            "heartbeat_at, stopped_at) SELECT 'w' || g || '@host' || (g % 50), 'host' || (g % 50), g, 'cuda:' || (g % 8), "
            ":dcs[1 + g % 4], :fp, now() - interval '2 days', "
            "CASE WHEN g <= :live THEN now() ELSE now() - (g || ' minutes')::interval END, "
            "CASE WHEN g > :live AND g % 2 = 0 THEN now() - (g || ' minutes')::interval END "
            "FROM generate_series(1, :n) g"), {"dcs": dc_ids, "fp": ids[CLASSES[0]][1], "live": SCALE["live_workers"],
                                                 "n": SCALE["workers"]})
        s.execute(text("CREATE TEMP TABLE k (i int PRIMARY KEY, hash text, key json)"))
        s.execute(text("INSERT INTO k VALUES (:i, :hash, CAST(:key AS json))"),
                  [{"i": i, "hash": k.stable_hash, "key": json.dumps(k.to_json())} for i, k in enumerate(keys)])
        s.execute(text(
            "INSERT INTO jobs (id, kind, origin, kernel, kernel_version, device_class_id, device_selector, state, "
            "sampler, seed, budget_trials, request, created_at, started_at, finished_at) "
            "SELECT md5('job' || g), CASE WHEN g % 10 = 0 THEN 'retune' ELSE 'tune' END, 'queued', 'matmul', :v, "
            ":dcs[1 + g % 4], 'h100', CASE WHEN g <= 50 THEN 'queued' WHEN g <= 100 THEN 'running' "
            "WHEN g % 20 = 0 THEN 'failed' ELSE 'done' END, 'auto', 0, 100, CASE WHEN g % 10 = 0 THEN "
            "json_build_object('retune_run', 'run-' || (g / 200)) ELSE CAST('{}' AS json) END, "
            "now() - (g || ' minutes')::interval, now() - (g || ' minutes')::interval, "
            "CASE WHEN g > 100 THEN now() - (g || ' minutes')::interval + interval '20 minutes' END "
            "FROM generate_series(1, :n) g"), {"v": spec.version, "dcs": dc_ids, "n": SCALE["jobs"]})
        s.execute(text(
            "INSERT INTO job_keys (job_id, key_hash, key, study_name, state, trials_done, enqueued_at) "
            "SELECT md5('job' || g), k.hash, k.key, 'study' || g, CASE WHEN g <= 100 THEN 'running' ELSE 'done' END, "
            "100, now() - (g || ' minutes')::interval FROM generate_series(1, :n) g JOIN k ON k.i = g % :keys"),
                  {"n": SCALE["jobs"], "keys": SCALE["keys"]})
        per_key = (SCALE["trials"] - SCALE["big_key_trials"]) // SCALE["jobs"]
        trials = ("INSERT INTO tuning_trials (job_id, job_key_id, kernel, key_hash, device_class_id, fingerprint_id, "
                  "worker_id, study_name, optuna_number, config, config_hash, status, median_ms, p20_ms, p80_ms, cv, "
                  "reps, compile_s, created_at) "
                  "SELECT jk.job_id, jk.id, 'matmul', jk.key_hash, :dc, :fp, 1 + jk.id % :workers, jk.study_name, n, "
                  "CAST(json_build_object('BLOCK_M', 16 << (n % 4), 'BLOCK_N', 16 << (n / 4 % 4), 'BLOCK_K', 32, "
                  "'GROUP_M', 8, 'num_warps', 4, 'num_stages', 1 + n % 5) AS json), "
                  "substr(md5('c' || (n % 80)), 1, 12), CASE WHEN n % 17 = 0 THEN 'invalid' WHEN n % 29 = 0 "
                  "THEN 'compile_error' ELSE 'ok' END, 0.1 + (n % 80) * 0.001, 0.1, 0.2, 0.01, 10, 0.5, "
                  "now() - ((jk.id + n) || ' seconds')::interval FROM job_keys jk, generate_series(0, :per - 1) n "
                  "WHERE jk.id BETWEEN :lo AND :hi")
        dc, fp = ids[CLASSES[0]]
        first_key = s.execute(text("SELECT min(id) FROM job_keys")).scalar()
        for lo in range(first_key, first_key + SCALE["jobs"], 1000):  # in slices: one statement of 900,000 rows is slow to plan
            s.execute(text(trials), {"dc": dc, "fp": fp, "workers": SCALE["workers"], "per": per_key, "lo": lo,
                                     "hi": lo + 999})
        big = s.execute(text("SELECT job_id, key_hash, id FROM job_keys ORDER BY id DESC LIMIT 1")).one()
        s.execute(text(trials.replace("generate_series(0, :per - 1) n", "generate_series(:per, :per + :big - 1) n")),
                  {"dc": dc, "fp": fp, "workers": SCALE["workers"], "per": per_key, "big": SCALE["big_key_trials"],
                   "lo": big.id, "hi": big.id})
        best = ("INSERT INTO best_configs (kernel, kernel_version, key_hash, key, dtype, device_class_id, fingerprint_id, "
                "config, config_hash, median_ms, default_ms, speedup, cv, trials, job_id, created_at, superseded_at) "
                "SELECT 'matmul', :v, k.hash, k.key, 'bfloat16', :dcs[1 + k.i % 4], :fp, "
                "CAST(:config AS json), 'cfg', 0.1 + k.i * 1e-5, 0.2, 2.0, 0.01, 100, NULL, now() - interval '1 day', "
                "{superseded} FROM k")
        s.execute(text(best.format(superseded="now()")), {"v": spec.version, "dcs": dc_ids, "fp": old_fp,
                                                          "config": json.dumps(CONFIG)})
        s.execute(text(best.format(superseded="NULL")), {"v": spec.version, "dcs": dc_ids,
                                                         "fp": ids[CLASSES[0]][1], "config": json.dumps(CONFIG)})
        s.execute(text(
            "INSERT INTO runtime_misses (kernel, kernel_version, key_hash, key, dtype, device_class, fingerprint, level, "
            "count, first_seen, last_seen) SELECT 'matmul', :v, substr(md5('miss' || g), 1, 16), "
            "CAST(json_build_object('kernel', 'matmul', 'version', CAST(:v2 AS text), 'dims', json_build_object('M', g, 'N', 4096, "
            "'K', 4096), 'dtype', 'bfloat16') AS json), 'bfloat16', (CAST(:classes AS text[]))[1 + g % 4], 'h100fp0000000000', "
            "CASE WHEN g % 2 = 0 THEN 'nearest' ELSE 'default' END, 1 + g % 1000, now() - interval '3 days', now() "
            "FROM generate_series(1, :n) g"), {"v": spec.version, "v2": spec.version, "classes": list(CLASSES),
                                                 "n": SCALE["misses"]})
        done_job = s.execute(text("SELECT job_id, key_hash FROM job_keys WHERE state = 'done' ORDER BY id LIMIT 1")).one()
    # the state autovacuum keeps a live database in: statistics, and the visibility map that lets
    # the read paths answer from their indexes alone (VACUUM cannot run in a transaction)
    from sqlalchemy import create_engine

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return {"job": done_job.job_id, "key_hash": done_job.key_hash, "big_job": big.job_id, "big_key": big.key_hash}


def scale_routes(ids: dict) -> dict[str, str]:
    """Every page and read route, as a dashboard user and a scraper call them."""
    k, big = ids["key_hash"], ids["big_key"]
    a, b = CLASSES[0], CLASSES[1]
    shape = "M=16,N=1024,K=4096"
    sweep = f"kernel=matmul&vary=M&shape=N=1024,K=4096&device_class={a}&dtype=bfloat16"
    return {
        "/": "/", "/jobs": "/jobs", "/jobs/{id}": f"/jobs/{ids['job']}", "/jobs/{id} (100,000 trials)": f"/jobs/{ids['big_job']}",
        "/keys (a key)": f"/keys/matmul/{k}", "/keys (100,000 trials)": f"/keys/matmul/{big}",
        "/retune": "/retune", "/compare": f"/compare?a={a}&b={b}", "/shapes": f"/shapes?{sweep}",
        "/v1/kernels": "/v1/kernels", "/v1/device-classes": "/v1/device-classes", "/v1/workers": "/v1/workers",
        "/v1/jobs": "/v1/jobs", "/v1/jobs/{id}": f"/v1/jobs/{ids['job']}",
        "/v1/jobs/{id} (100,000 trials)": f"/v1/jobs/{ids['big_job']}",
        "/v1/best": "/v1/best?kernel=matmul", "/v1/best (a shape)": f"/v1/best?kernel=matmul&shape={shape}&dtype=bfloat16",
        "/v1/history": f"/v1/history?kernel=matmul&shape={shape}&dtype=bfloat16",
        "/v1/keys (a key)": f"/v1/keys/matmul/{k}", "/v1/keys (100,000 trials)": f"/v1/keys/matmul/{big}",
        "/v1/retune": "/v1/retune", "/v1/compare": f"/v1/compare?device_class={a}&device_class={b}",
        "/v1/shapes": f"/v1/shapes?{sweep}",
        "/v1/bundle": f"/v1/bundle?device_class={a}", "/v1/runtime-misses": "/v1/runtime-misses",
        "/metrics": "/metrics", "/healthz": "/healthz",
    }


def concurrent_latencies(base: str, path: str, clients: int, requests: int, headers: dict) -> dict:
    """requests sent by `clients` threads at once; p50 and p95 of all of them, and the answer's size."""
    import httpx

    out: list[float] = []
    sizes: list[int] = []
    statuses: set[int] = set()
    lock = threading.Lock()

    def run(n: int) -> None:
        with httpx.Client(base_url=base, timeout=600) as c:
            for _ in range(n):
                t = time.perf_counter()
                r = c.get(path, headers=headers)
                with lock:
                    out.append((time.perf_counter() - t) * 1e3)
                    sizes.append(len(r.content))
                    statuses.add(r.status_code)

    threads = [threading.Thread(target=run, args=(max(1, requests // clients),)) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    q = statistics.quantiles(out, n=20) if len(out) > 1 else out * 19
    return {"p50_ms": round(statistics.median(out), 1), "p95_ms": round(q[18], 1), "requests": len(out),
            "bytes": int(statistics.median(sizes)), "statuses": sorted(statuses)}


def scale_main(args) -> None:
    """--scale: fill (or reuse, --db) a fleet-sized database, serve it, time every read route."""
    import httpx

    from workers.local import scratch_postgres

    home = Path(tempfile.mkdtemp(prefix="tuner-api-scale-"))
    loads = os.getloadavg()  # other work on the machine (1, 5, 15 min): recorded beside the figures
    load = loads[0]
    with (contextlib.nullcontext(args.db) if args.db else scratch_postgres(args.pg_admin)) as url:
        t = time.perf_counter()
        if args.ids:  # a database filled before: brought to this tree's schema (a new index, say)
            from db.session import upgrade

            upgrade(url)
        ids = json.loads(args.ids) if args.ids else populate_scale(url)
        populate_s = time.perf_counter() - t
        print(f"database ready in {populate_s:.0f} s: {json.dumps(ids)}", flush=True)
        results = {}
        with serving(home, url) as base:
            for name, path in scale_routes(ids).items():
                if args.only and args.only not in name:
                    continue
                t = time.perf_counter()
                first = httpx.get(base + path, headers=AUTH, timeout=900)
                first_ms = (time.perf_counter() - t) * 1e3
                r = concurrent_latencies(base, path, args.clients, args.requests, AUTH)
                target = 1000.0 if name == "/metrics" else 200.0
                results[name] = {"path": path, "first_ms": round(first_ms, 1), **r, "target_p95_ms": target,
                                 "met": r["p95_ms"] <= target and first.status_code == 200}
                print(f"{name:34s} first {first_ms:9.1f} ms  p50 {r['p50_ms']:9.1f}  p95 {r['p95_ms']:9.1f} ms  "
                      f"{r['bytes'] / 1e3:8.1f} kB  {r['statuses']}  {'met' if results[name]['met'] else 'NOT met'}",
                      flush=True)
    doc = {"benchmark": "api_latency --scale", "date": datetime.now(timezone.utc).isoformat(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "load_average_1m": {"start": round(load, 1), "end": round(os.getloadavg()[0], 1)},
           "load_average_1_5_15m": {"start": [round(x, 1) for x in loads], "end": [round(x, 1) for x in os.getloadavg()]},
           "server": "tuner serve: one uvicorn process, PostgreSQL 127.0.0.1", "rows": SCALE,
           "populate_s": round(populate_s, 1), "clients": args.clients, "requests_per_route": args.requests,
           "note": "clients and server share the machine's cores", "results": results}
    out = args.out if args.out != RESULTS else RESULTS.with_name("api_scale.json")
    if args.only:
        out = out.with_name(out.stem + "-partial.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    met = sum(r["met"] for r in results.values())
    lines = ["# HTTP API at fleet scale (bench/api_latency.py --scale)", "",
             f"{doc['date'][:10]}, {doc['machine']} (load average {load:.1f} at the start); {doc['server']}; "
             f"{SCALE['workers']:,} workers, {SCALE['jobs']:,} jobs, {SCALE['trials']:,} trials (one key with "
             f"{SCALE['big_key_trials']:,}), {SCALE['keys']:,} keys with bests, {SCALE['misses']:,} runtime-miss rows; "
             f"{args.clients} concurrent clients, {args.requests} requests a route, on the same machine. "
             f"Target p95 <= 200 ms (/metrics <= 1 s): met by {met} of {len(results)} routes.", "",
             # the end's load is this benchmark's own (8 clients, the server, PostgreSQL); the start's is other work
             "Load averages (1, 5, 15 min) at the start {} and the end {} (the end's is mostly this run's own){}.".format(
                 *(", ".join(map(str, doc["load_average_1_5_15m"][k])) for k in ("start", "end")),
                 ": the machine was loaded by other work on its cores at the start, which every figure includes "
                 "(/healthz, one query, shows how much)" if loads[0] > 1 else ""), "",
             "| route | first ms | p50 ms | p95 ms | kB | target met |", "|---|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        lines.append(f"| `{name}` | {r['first_ms']} | {r['p50_ms']} | {r['p95_ms']} | {r['bytes'] / 1e3:.1f} | "
                     f"{'yes' if r['met'] else 'no'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":  # run directly, it is `bench/api_latency.py --scale`, whose options it takes
    import sys

    from api_latency import main

    sys.argv.insert(1, "--scale")
    main()
