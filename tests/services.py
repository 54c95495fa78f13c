"""The real PostgreSQL, Redis and `tuner worker` processes that integration tests run against.

If a service is down, it is started with the machine's own command, as CI's setup would.
"""
from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from tests.cli_helpers import ROOT
from workers import local
from workers.local import wait_until as wait_for  # noqa: F401  (the tests' name for it)

PG_ADMIN = os.environ.get("TUNER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# a Redis server of its own (another port) lets two test runs on one machine restart theirs apart
REDIS_PORT = int(os.environ.get("TUNER_TEST_REDIS_PORT", "6379"))
REDIS_START = (f"redis-server --daemonize yes --bind 127.0.0.1 -::1 --port {REDIS_PORT} --save '' --appendonly no "
               f"--dir /var/lib/redis --dbfilename dump-{REDIS_PORT}.rdb --logfile /var/log/redis/ci-{REDIS_PORT}.log")
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def redis_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), *args], capture_output=True, text=True)


def redis_up() -> bool:
    return redis_cli("ping").stdout.strip() == "PONG"


def ensure_redis() -> None:
    if not redis_up():
        subprocess.run(REDIS_START, shell=True, check=False)
        wait_for(redis_up, 20, "Redis to start", poll_s=0.2)


def pg_up() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True).returncode == 0


def ensure_postgres() -> None:
    if not pg_up():
        subprocess.run(PG_START, shell=True, check=False)
        wait_for(pg_up, 30, "PostgreSQL to start", poll_s=0.2)


def run_cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return local.run_cli(env, *args, cwd=ROOT, timeout=timeout)


def restart_redis() -> None:
    redis_cli("shutdown", "nosave")
    wait_for(lambda: not redis_up(), 10, "Redis to stop", poll_s=0.2)
    ensure_redis()


@contextmanager
def pg_database():
    """A fresh PostgreSQL database for one test module; dropped afterwards."""
    ensure_postgres()
    with local.scratch_postgres(PG_ADMIN) as url:
        yield url


def redis_url() -> str:
    """A Redis database index of its own, emptied, so concurrent runs never share queues."""
    ensure_redis()
    return local.scratch_redis(f"redis://127.0.0.1:{REDIS_PORT}")


class WorkerProc(local.WorkerProcess):
    def __init__(self, name: str, env: dict, log_dir: Path, device: str = "cpu"):
        super().__init__(name, env, log_dir, device, cwd=ROOT)


def service_env(home: Path, db_url: str | None, broker_url: str | None, **extra: str) -> dict:
    settings = dict(TUNER_KERNEL_MODULES="tests.kernels.trivial", TUNER_HEARTBEAT_S="1", TUNER_STALL_S="8",
                    TUNER_WORKER_DEAD_AFTER_S="6", TUNER_BATCH_TRIALS="3", TRITON_INTERPRET="1")
    return local.fleet_env(home, db_url, broker_url, pythonpath=str(ROOT), **{**settings, **extra})


def key_audit(engine, job: str) -> list[dict]:
    """Per key of a job, what the service's invariants are checked against: its state and budget,
    trials counted, configurations measured more than once, the key's current best rows (on the
    class and stack its trials ran on), how often its finalization was claimed, and the Optuna
    trials of its study still RUNNING."""
    from sqlalchemy import text

    sql = text("""
        SELECT k.id, k.state, j.budget_trials, j.request, k.key_hash, k.study_name,
          (SELECT count(*) FROM tuning_trials t WHERE t.job_key_id = k.id AND t.status != 'invalid') AS counted,
          (SELECT count(*) FROM (SELECT t.config_hash FROM tuning_trials t WHERE t.job_key_id = k.id
             AND t.status != 'invalid' GROUP BY t.config_hash HAVING count(*) > 1) d) AS duplicated,
          (SELECT count(*) FROM best_configs b WHERE b.superseded_at IS NULL AND b.key_hash = k.key_hash
             AND EXISTS (SELECT 1 FROM tuning_trials t WHERE t.job_key_id = k.id
               AND t.device_class_id = b.device_class_id AND t.fingerprint_id = b.fingerprint_id)) AS current_bests,
          (SELECT count(*) FROM trials o JOIN studies s ON s.study_id = o.study_id
             WHERE s.study_name = k.study_name AND o.state = 'RUNNING') AS running,
          k.finalize_attempts
        FROM job_keys k JOIN jobs j ON j.id = k.job_id WHERE k.job_id = :j ORDER BY k.id""")
    out = []
    with engine.connect() as c:
        for row in c.execute(sql, {"j": job}).mappings():
            r = dict(row)
            request = r.pop("request")
            request = json.loads(request) if isinstance(request, str) else request
            r["budget"] = int((request or {}).get("budgets", {}).get(r["key_hash"], r.pop("budget_trials")))
            out.append(r)
    return out


def dropped_results(logs: str) -> int:
    """Measurements whose result was not stored (search/loop.py logs each): a configuration measured
    again while another trial held it is one, which `key_audit`'s stored rows cannot show."""
    return logs.count("its result is dropped")


def redis_llen(broker_url: str, queue: str) -> int:
    """Messages waiting in a Celery queue on Redis."""
    import redis

    return redis.Redis.from_url(broker_url).llen(queue)


@contextmanager
def database_outage(db_url: str):
    """The database unreachable for the block: new connections refused (ALLOW_CONNECTIONS false)
    and open ones ended, on a test's own database only, never the shared server."""
    from sqlalchemy import create_engine, text

    name = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n "
                           "AND pid != pg_backend_pid()"), {"n": name})
        yield
    finally:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@contextmanager
def fleet_world(home: Path, **env: str):
    """A one-machine fleet's parts for a test module: a fresh PostgreSQL database at the schema, a
    Redis database of its own, the service environment (plus `env`), an engine, and a list the
    test appends its WorkerProcs to (stopped at the end)."""
    from sqlalchemy import create_engine

    with pg_database() as db_url:
        service = service_env(home, db_url, redis_url(), **env)
        assert run_cli(service, "db", "upgrade").returncode == 0
        engine = create_engine(db_url)
        workers: list = []
        try:
            yield {"env": service, "engine": engine, "home": home, "workers": workers}
        finally:
            for w in workers:
                w.stop()
            engine.dispose()
