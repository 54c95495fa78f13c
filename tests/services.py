"""The real PostgreSQL, Redis and `tuner worker` processes that integration tests run against.

If a service is down, it is started with the machine's own command, as CI's setup would.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from tests.cli_helpers import ROOT, tuner_env

PG_ADMIN = os.environ.get("TUNER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_START = ("redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no "
               "--dir /var/lib/redis --logfile /var/log/redis/ci.log")
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def redis_up() -> bool:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True, text=True).stdout.strip() == "PONG"


def ensure_redis() -> None:
    if not redis_up():
        subprocess.run(REDIS_START, shell=True, check=False)
        _wait(redis_up, 20, "Redis did not start")


def pg_up() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True).returncode == 0


def ensure_postgres() -> None:
    if not pg_up():
        subprocess.run(PG_START, shell=True, check=False)
        _wait(pg_up, 30, "PostgreSQL did not start")


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise RuntimeError(what)


def run_cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(cond, timeout: float = 120, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def restart_redis() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], capture_output=True)
    _wait(lambda: not redis_up(), 10, "Redis did not stop")
    ensure_redis()


@contextmanager
def pg_database():
    """A fresh PostgreSQL database for one test module; dropped afterwards."""
    from sqlalchemy import create_engine, text

    ensure_postgres()
    name = f"tuner_it_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def redis_url() -> str:
    """A Redis database index of its own, emptied, so concurrent runs never share queues."""
    ensure_redis()
    n = random.randint(1, 15)
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-n", str(n), "flushdb"], capture_output=True, check=True)
    return f"redis://127.0.0.1:6379/{n}"


class WorkerProc:
    def __init__(self, name: str, env: dict, log_dir: Path, device: str = "cpu"):
        self.name, self.log = name, log_dir / f"{name}.log"
        self._f = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "worker", "--device", device,
                                      "--name", f"{name}@test", "--loglevel", "INFO"],
                                     env=env, cwd=ROOT, stdout=self._f, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._f.close()

    def text(self) -> str:
        return self.log.read_text()


def service_env(home: Path, db_url: str | None, broker_url: str | None, **extra: str) -> dict:
    settings = dict(TUNER_KERNEL_MODULES="tests.kernels.trivial", TUNER_HEARTBEAT_S="1", TUNER_STALL_S="8",
                    TUNER_WORKER_DEAD_AFTER_S="6", TUNER_BATCH_TRIALS="3", TRITON_INTERPRET="1")
    env = tuner_env(home, **{**settings, **extra})
    if db_url:
        env["TUNER_DB_URL"] = db_url
    if broker_url:
        env["TUNER_BROKER_URL"] = broker_url
    return env
