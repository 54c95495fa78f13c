"""Queue throughput: many small jobs of a trivial kernel through real worker processes.

    .venv/bin/python bench/queue_throughput.py [--jobs 10] [--trials 10,30] [--load-jobs 40 --load-trials 25]

For each broker (Redis + PostgreSQL, then the embedded SQLite broker and database):
  1. one worker: the same jobs through the service, and the same work in-process with
     `tuner tune` (no broker); the difference per trial is the coordinator and broker overhead;
  2. four workers: throughput, and a check that nothing was lost or counted twice (every job
     done, trials per key within [budget, budget + batch], one best row per job, no duplicated
     Optuna trial, no configuration measured twice by a key).
The kernel is the tests' trivial one (tests/kernels/trivial.py, which the worker processes load
through TUNER_KERNEL_MODULES) in the Triton interpreter: these are service figures, not kernel
figures. Needs PostgreSQL (--pg-admin) and Redis (--redis). Results: bench/results/queue_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from db import lifecycle
from workers.local import WorkerProcess, fleet_env, run_cli, scratch_postgres, scratch_redis, wait_until

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "queue_throughput.json"
BATCH = 3
# the service settings of a local fleet that notices a lost message in seconds, not minutes
SETTINGS = dict(TUNER_KERNEL_MODULES="tests.kernels.trivial", TUNER_HEARTBEAT_S="1", TUNER_STALL_S="8",
                TUNER_WORKER_DEAD_AFTER_S="6", TUNER_BATCH_TRIALS=str(BATCH), TRITON_INTERPRET="1")


@contextmanager
def backend(kind: str, home: Path, pg_admin: str, redis: str):
    if kind == "redis+postgresql":
        with scratch_postgres(pg_admin) as url:
            yield fleet_env(home, url, scratch_redis(redis), pythonpath=str(ROOT), **SETTINGS)
    else:
        yield fleet_env(home, pythonpath=str(ROOT), **SETTINGS)


def engine_for(env: dict):
    from sqlalchemy import create_engine
    return create_engine(env.get("TUNER_DB_URL") or f"sqlite:///{env['TUNER_HOME']}/tuner.db")


def submit_all(env: dict, jobs: int, trials: int, offset: int) -> tuple[list[str], float]:
    """Submit in this process, as a serving or training framework's coordinator would."""
    from tuner.coordinator import submit
    from tuner.request import build_request
    from tuner.settings import configure_plugins, from_env

    settings = from_env(env)
    configure_plugins(settings)
    ids, t = [], time.perf_counter()
    for i in range(jobs):
        req = build_request("trivial", [f"N={offset + i + 1}"], ["float32"], trials, "tpe", i)
        ids.append(submit(settings, req, "cpu", parallel=2))
    return ids, (time.perf_counter() - t) / jobs


def wait_done(engine, ids: list[str], timeout: float) -> None:
    from sqlalchemy import text

    def done():
        with engine.connect() as c:
            states = c.execute(text("select state from jobs where id in :ids").bindparams(
                __import__("sqlalchemy").bindparam("ids", expanding=True)), {"ids": ids}).scalars().all()
        return len(states) == len(ids) and all(s in lifecycle.END_STATES for s in states)
    wait_until(done, timeout, "jobs to finish")


def audit(engine, ids: list[str], trials: int) -> dict:
    from sqlalchemy import bindparam, text

    q = lambda sql: text(sql).bindparams(bindparam("ids", expanding=True))  # noqa: E731
    with engine.connect() as c:
        states = c.execute(q("select state, count(*) from jobs where id in :ids group by state"), {"ids": ids}).all()
        per_key = c.execute(q("select job_key_id, count(*) from tuning_trials where job_id in :ids "
                              "and status != 'invalid' group by job_key_id"), {"ids": ids}).all()
        bests = c.execute(q("select job_id, count(*) from best_configs where job_id in :ids group by job_id"),
                          {"ids": ids}).all()
        dup = c.execute(q("select count(*) from (select study_name, optuna_number from tuning_trials "
                          "where job_id in :ids group by study_name, optuna_number having count(*) > 1) d"),
                        {"ids": ids}).scalar()
        failed = c.execute(q("select count(*) from tuning_trials where job_id in :ids and status not in "
                             "('ok', 'invalid')"), {"ids": ids}).scalar()
        # a configuration a key measured more than once (cooperating workers must never do that)
        remeasured = c.execute(q("select count(*) from (select job_key_id, config_hash from tuning_trials "
                                 "where job_id in :ids and status != 'invalid' group by job_key_id, config_hash "
                                 "having count(*) > 1) d"), {"ids": ids}).scalar()
    counts = [n for _, n in per_key]
    return {"job_states": dict(states), "trials_total": sum(counts), "trials_per_key_min": min(counts),
            "trials_per_key_max": max(counts), "keys_with_trials": len(counts),
            "jobs_with_one_best_row": sum(1 for _, n in bests if n == 1), "duplicated_optuna_trials": dup,
            "configurations_measured_twice": remeasured, "failed_trials": failed,
            "none_lost": (dict(states) == {"done": len(ids)} and len(counts) == len(ids)
                          and min(counts) >= trials and max(counts) <= trials + BATCH
                          and sum(1 for _, n in bests if n == 1) == len(ids) and dup == 0 and remeasured == 0)}


def through_service(env: dict, home: Path, workers: int, jobs: int, trials: int, offset: int) -> dict:
    procs = [WorkerProcess(f"bench{workers}-{i}", env, home, cwd=ROOT) for i in range(workers)]
    engine = engine_for(env)
    try:
        from sqlalchemy import text
        names = {f"{p.name}@test" for p in procs}
        wait_until(lambda: names <= {r[0] for r in engine.connect().execute(text("select name from workers"))},
                   240, "workers to register")
        time.sleep(2)
        t = time.perf_counter()
        ids, submit_s = submit_all(env, jobs, trials, offset)
        wait_done(engine, ids, 3600)
        wall = time.perf_counter() - t
        result = audit(engine, ids, trials)
        result.update(workers=workers, jobs=jobs, trials_per_job=trials, wall_s=round(wall, 2),
                      trials_per_s=round(result["trials_total"] / wall, 2), submit_ms_per_job=round(submit_s * 1e3, 1))
        return result
    finally:
        for p in procs:
            p.stop()
        engine.dispose()


def in_process(env: dict, jobs: int, trials: int, offset: int) -> dict:
    shapes = [a for i in range(jobs) for a in ("--shape", f"N={offset + i + 1}")]
    t = time.perf_counter()
    proc = run_cli(env, "tune", "trivial", *shapes, "--dtype", "float32", "--trials", str(trials), "--seed", "0",
                   "--device", "cpu", "--json", cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, proc.stderr
    wall = time.perf_counter() - t
    done = sum(k["trials"] for k in json.loads(proc.stdout)["keys"])
    return {"jobs": 1, "keys": jobs, "trials_total": done, "wall_s": round(wall, 2), "trials_per_s": round(done / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10, help="jobs (one key each) in the overhead runs")
    ap.add_argument("--trials", default="10,30", help="trials per key of the two overhead runs")
    ap.add_argument("--load-jobs", type=int, default=40, help="jobs in the four-worker run")
    ap.add_argument("--load-trials", type=int, default=25, help="trials per job in the four-worker run")
    ap.add_argument("--brokers", default="redis+postgresql,sqlite")
    ap.add_argument("--out", default=str(RESULTS), help="results file")
    ap.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="a PostgreSQL URL allowed to create databases (a scratch one is made and dropped)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379", help="a Redis server (a spare database index is used)")
    args = ap.parse_args()
    results = Path(args.out)
    small, large = (int(x) for x in args.trials.split(","))
    out = {"benchmark": "queue_throughput", "date": datetime.now(timezone.utc).isoformat(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "kernel": "trivial (tests/kernels/trivial.py) in the Triton interpreter", "batch_trials": BATCH,
           "method": ("overhead per trial = slope of wall time over trials through the service with one worker "
                      "minus the same slope in-process (`tuner tune`, no broker), from runs of "
                      f"{args.jobs} keys x {small} and x {large} trials; fixed costs (start-up, per-key "
                      "finalization) cancel in the slopes"),
           "results": {}}
    for kind in args.brokers.split(","):
        home = Path(tempfile.mkdtemp(prefix=f"tuner-qt-{kind}-"))
        with backend(kind, home, args.pg_admin, args.redis) as env:
            assert run_cli(env, "db", "upgrade", cwd=ROOT).returncode == 0
            svc = [through_service(env, home, 1, args.jobs, t, 1000 * i) for i, t in enumerate((small, large))]
            loc = [in_process(env, args.jobs, t, 10_000 + 1000 * i) for i, t in enumerate((small, large))]
            four = through_service(env, home, 4, args.load_jobs, args.load_trials, 20_000)
        slope = lambda runs: (runs[1]["wall_s"] - runs[0]["wall_s"]) / (runs[1]["trials_total"] - runs[0]["trials_total"])  # noqa: E731
        out["results"][kind] = {
            "one_worker_runs": svc, "in_process_runs": loc, "four_workers": four,
            "service_s_per_trial": round(slope(svc), 4), "in_process_s_per_trial": round(slope(loc), 4),
            "coordinator_and_broker_overhead_ms_per_trial": round((slope(svc) - slope(loc)) * 1e3, 2),
        }
        print(json.dumps({kind: out["results"][kind]}, indent=1), flush=True)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
