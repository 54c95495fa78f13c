"""The HTTP API's read latency with 10,000 stored best rows: GET /v1/bundle (a class's bundle, and
the 304 a runtime gets while nothing changed) and a job-status read (GET /v1/jobs/ID), against a
real `tuner serve` (one uvicorn process) on PostgreSQL.

    .venv/bin/python bench/api_latency.py [--rows 10000] [--requests 200] [--clients 4] [--seconds 10]
    .venv/bin/python bench/api_latency.py --scale   # every route on a fleet-sized database: bench/api_scale.py

The rows: one kernel (matmul) on 4 device classes, 2,500 shapes each, so a class's bundle holds
2,500 entries; the job has 4 keys and 50 trials each. The server keeps the last bundle it built and
rebuilds it when a best was stored since: measured too, one new best before each request. Latency: one client, one request at a time
(p50 and p99 of --requests). Throughput: --clients threads for --seconds, requests per second.
The clients run on the same 2-core machine as the server, so the figures are this machine's, not
the server's alone. Results: bench/results/api_latency.json and .md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "api_latency.json"
CLASSES = ("h100-sxm-80gb", "h200-141gb", "mi300x-192gb", "a100-sxm-80gb")
TOKEN = "bench-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}  # every read needs the token


CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}


def identity(s, slug: str) -> tuple[int, int]:
    from db import store
    from devices.classes import KNOWN_DEVICES

    dc = next(d for d in KNOWN_DEVICES if d.slug == slug)
    return store.store_identity(s, dc.to_json(), {"hash": f"{slug[:6]}fp".ljust(16, "0")[:16], "driver": "580.1",
                                                  "runtime": "cuda-13.0", "triton": "3.6.0", "torch": "2.13.0"})


def write_best(s, ids: tuple[int, int], i: int, ms: float) -> None:
    """The current best of the class's i-th shape (superseding the one before)."""
    from db import store
    from search_spaces import registry
    from keys import config_hash

    key = registry.get("matmul").make_key({"M": 16 * (1 + i % 50), "N": 1024 + 64 * (i // 50), "K": 4096}, "bfloat16")
    store.write_best(s, kernel="matmul", kernel_version=key.version, key_hash=key.stable_hash, key=key.to_json(),
                     dtype="bfloat16", device_class_id=ids[0], fingerprint_id=ids[1], config=CONFIG,
                     config_hash=config_hash(CONFIG), median_ms=ms, default_ms=0.2, speedup=0.2 / ms, cv=0.01,
                     trials=100, job_id=None)


def populate(url: str, rows: int) -> str:
    """rows current bests (db.store.write_best) and one job with trials; the job id."""
    from db import lifecycle, store
    from db.session import session_scope, upgrade
    from search import strategies
    from search_spaces import registry
    from keys import config_hash

    upgrade(url)
    spec = registry.get("matmul")
    config = CONFIG
    per_class = rows // len(CLASSES)
    with session_scope(url) as s:
        ids = {slug: identity(s, slug) for slug in CLASSES}
        for slug in CLASSES:
            for i in range(per_class):
                write_best(s, ids[slug], i, 0.1 + i * 1e-4)
        keys = [spec.make_key({"M": 4096, "N": 4096 + 64 * i, "K": 4096}, "bfloat16") for i in range(4)]
        job, key_ids = lifecycle.create_job(s, kind="tune", origin=lifecycle.QUEUED_ORIGIN, kernel="matmul",
                                        kernel_version=spec.version, keys=[k.to_json() for k in keys],
                                        key_hashes=[k.stable_hash for k in keys],
                                        sampler=strategies.DEFAULT, seed=0, budget_trials=50, request={"keys": []},
                                        device_selector="h100", state=lifecycle.RUNNING)
        dc_id, fp_id = ids["h100-sxm-80gb"]
        for key, key_id in zip(keys, key_ids):
            for n in range(50):
                c = dict(config, BLOCK_K=32 + n)
                store.record_trial(s, job_id=job, job_key_id=key_id, kernel="matmul", key_hash=key.stable_hash,
                                   device_class_id=dc_id, fingerprint_id=fp_id, study_name="bench", optuna_number=n,
                                   config=c, config_hash=config_hash(c), status="ok", median_ms=0.2 + n * 1e-3,
                                   cv=0.01, reps=10)
    return job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(home: Path, url: str):
    """`tuner serve` (one uvicorn process) on url's database until the block ends: its base URL."""
    import httpx

    from workers.local import fleet_env, wait_until

    port = free_port()
    env = fleet_env(home, url, pythonpath=str(ROOT), TUNER_API_TOKEN=TOKEN)
    server = subprocess.Popen([sys.executable, "-m", "tuner.cli", "serve", "--port", str(port), "--loglevel",
                               "warning"], env=env, cwd=ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 120, "tuner serve")
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def latencies(client, url: str, n: int, headers: dict | None = None, want: int = 200) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url, headers=headers)
        out.append((time.perf_counter() - t) * 1e3)
        assert r.status_code == want, (url, r.status_code, r.text[:200])
    return out


def throughput(base: str, path: str, clients: int, seconds: float, headers: dict | None = None) -> float:
    import httpx

    counts = [0] * clients
    end = time.perf_counter() + seconds

    def run(i: int) -> None:
        with httpx.Client(base_url=base, timeout=60, headers=AUTH) as c:
            while time.perf_counter() < end:
                c.get(path, headers=headers)
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(counts) / (time.perf_counter() - t)


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=100)
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(q[98], 2), "requests": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000, help="best rows stored (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per endpoint")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients for requests per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each throughput run lasts")
    ap.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    ap.add_argument("--scale", action="store_true", help="fill a fleet-sized database (2,000 workers, 10,000 jobs, "
                    "1,000,000 trials, 100,000 runtime misses) and time every page and read route under --clients "
                    "(default 8 here) concurrent clients; results in bench/results/api_scale.{json,md}")
    ap.add_argument("--db", help="with --scale: fill this (empty, created beforehand) database and keep it, instead "
                    "of a scratch one dropped afterwards; with --ids, time it as filled before")
    ap.add_argument("--ids", help="with --db: the JSON of ids the fill printed (`database ready ...: {...}`); the "
                    "database is upgraded to this tree's schema, not filled again")
    ap.add_argument("--only", help="with --scale: only the routes whose name contains this")
    args = ap.parse_args()
    if args.scale:
        if args.clients == 4:
            args.clients = 8
        if args.requests == 200:
            args.requests = 40
        from api_scale import scale_main  # bench/ is the script's folder: on sys.path

        return scale_main(args)

    import httpx

    from workers.local import scratch_postgres

    home = Path(tempfile.mkdtemp(prefix="tuner-api-bench-"))
    load = os.getloadavg()[0]  # other work on the machine: recorded beside the figures
    with scratch_postgres(args.pg_admin) as url:
        t = time.perf_counter()
        job = populate(url, args.rows)
        populate_s = time.perf_counter() - t
        with serving(home, url) as base:
            bundle = f"/v1/bundle?device_class={CLASSES[0]}&kernel=matmul"
            status = f"/v1/jobs/{job}"
            results = {}
            with httpx.Client(base_url=base, timeout=60, headers=AUTH) as c:
                first = c.get(bundle)
                tag, size, entries = first.headers["etag"], len(first.content), len(first.json()["entries"])
                for _ in range(10):  # warm the server's pools and caches
                    c.get(bundle), c.get(status)
                results["bundle"] = summary(latencies(c, bundle, args.requests))
                results["bundle_304"] = summary(latencies(c, bundle, args.requests, {"if-none-match": tag}, want=304))
                results["job_status"] = summary(latencies(c, status, args.requests))
                # a runtime's fetch right after a worker stored a new best: the bundle is rebuilt
                from db.session import session_scope

                after = []
                for i in range(args.requests // 10):
                    with session_scope(url) as s:
                        write_best(s, identity(s, CLASSES[0]), i, 0.05 + i * 1e-4)
                    after += latencies(c, bundle, 1)
                results["bundle_after_a_new_best"] = summary(after)
            results["bundle"]["requests_per_s"] = round(throughput(base, bundle, args.clients, args.seconds), 1)
            results["bundle_304"]["requests_per_s"] = round(
                throughput(base, bundle, args.clients, args.seconds, {"if-none-match": tag}), 1)
            results["job_status"]["requests_per_s"] = round(throughput(base, status, args.clients, args.seconds), 1)
    doc = {"benchmark": "api_latency", "date": datetime.now(timezone.utc).isoformat(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "load_average_1m": {"start": round(load, 1), "end": round(os.getloadavg()[0], 1)},
           "server": "tuner serve: one uvicorn process, PostgreSQL 127.0.0.1", "best_rows": args.rows,
           "populate_s": round(populate_s, 1), "bundle_entries": entries, "bundle_bytes": size,
           "job": "4 keys, 50 trials each", "clients_for_requests_per_s": args.clients,
           "note": "clients and server share the machine's cores", "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# HTTP API latency (bench/api_latency.py)", "",
             f"{doc['date'][:10]}, {doc['machine']} (load average {load:.1f} at the start); {doc['server']}; "
             f"{args.rows} best rows; a class's bundle: "
             f"{entries} entries, {size / 1e6:.2f} MB; the job: {doc['job']}. One client for p50/p99 "
             f"({args.requests} requests); {args.clients} concurrent clients for requests per second "
             f"({args.seconds:.0f} s), on the same machine.", "",
             "| request | p50 ms | p99 ms | requests/s |", "|---|---:|---:|---:|"]
    names = {"bundle": f"GET {bundle}", "bundle_304": "the same with If-None-Match (304)",
             "job_status": "GET /v1/jobs/ID (job status)",
             "bundle_after_a_new_best": "the bundle right after a new best was stored (rebuilt)"}
    for k, r in results.items():
        lines.append(f"| {names[k]} | {r['p50_ms']} | {r['p99_ms']} | {r.get('requests_per_s', '-')} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
