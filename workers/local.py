"""A fleet on one machine: `tuner worker` processes started, watched and stopped from Python, with
a database and a broker of their own. The service's integration tests and benchmarks
(bench/queue_throughput.py) run the real worker processes through this; an operator can too.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def fleet_env(home: Path, db_url: str | None = None, broker_url: str | None = None,
              pythonpath: str | None = None, **settings: str) -> dict[str, str]:
    """The environment of a worker or CLI process of a local fleet: the caller's, with every TUNER_
    setting replaced by these (TUNER_HOME=home; the embedded database and broker when no URL is given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env.update(TUNER_HOME=str(home), PYTHONUNBUFFERED="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if db_url:
        env["TUNER_DB_URL"] = db_url
    if broker_url:
        env["TUNER_BROKER_URL"] = broker_url
    env.update(settings)
    return env


def run_cli(env: dict, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`tuner ARGS` in a subprocess with env; its output captured as text."""
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


class WorkerProcess:
    """One `tuner worker` process (in a session of its own, so a kill takes its children too),
    its output in log_dir/NAME.log."""

    def __init__(self, name: str, env: dict, log_dir: Path, device: str = "cpu", cwd: Path | None = None):
        self.name, self.log = name, Path(log_dir) / f"{name}.log"
        self._f = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "worker", "--device", device,
                                      "--name", f"{name}@test", "--loglevel", "INFO"],
                                     env=env, cwd=cwd, stdout=self._f, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
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


def wait_until(cond: Callable[[], bool], timeout: float = 120, what: str = "condition", poll_s: float = 0.5) -> None:
    """Return once cond() holds; AssertionError naming `what` after timeout seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database on admin_url's server, dropped afterwards; yields its URL."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"tuner_it_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def scratch_redis(server: str = "redis://127.0.0.1:6379") -> str:
    """A Redis database index of its own on server (1-15, chosen at random), emptied: its URL."""
    import redis

    url = f"{server.rstrip('/')}/{random.randint(1, 15)}"
    redis.Redis.from_url(url).flushdb()
    return url
