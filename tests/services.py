"""The real PostgreSQL, Redis and `tuner worker` processes that integration tests run against.

If a service is down, it is started with the machine's own command, as CI's setup would.
"""
from __future__ import annotations

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
