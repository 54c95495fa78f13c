"""Commands that run the service's long-lived processes (worker, scheduler, HTTP API) and the
schema upgrade."""
from __future__ import annotations

from typing import Optional

import typer

from tuner import settings as settings_mod
from tuner.cli.common import app, db_app, err
from tuner.errors import UserError


@app.command()
def worker(device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N"),
           name: Optional[str] = typer.Option(None, "--name", help="Worker node name (default: class-device-pid@host)."),
           loglevel: str = typer.Option("INFO", "--loglevel")) -> None:
    """Run a worker for one device: it consumes only the queues of its device class."""
    from tuner.worker import run_worker

    run_worker(settings_mod.get(), device, name, loglevel)


@app.command()
def scheduler(loglevel: str = typer.Option("INFO", "--loglevel")) -> None:
    """Run Celery beat: the nightly retune at TUNER_RETUNE_CRON (default '0 3 * * *', UTC)."""
    from tuner.scheduler import run_scheduler

    run_scheduler(settings_mod.get(), loglevel)


@app.command()
def serve(host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; beyond the loopback "
                                   "interface TUNER_API_TOKEN is required."),
          port: int = typer.Option(8000, "--port"), loglevel: str = typer.Option("info", "--loglevel")) -> None:
    """The HTTP API, dashboard and /metrics (FastAPI on uvicorn; docs at /docs)."""
    from tuner.api.app import serve as run

    settings = settings_mod.get()
    _warn_if_privileged(settings.db_url)
    run(settings, host, port, loglevel)


def _warn_if_privileged(url: str) -> None:
    """One line when the server's database role could write bests: it needs the API role's rights only."""
    from db.roles import API, writes_bests

    try:
        role = writes_bests(url)
    except Exception:  # unreachable, or no schema yet: the server's own start-up check says which
        return
    if role is not None:
        err.print(f"warning: tuner serve connects as the database role {role!r}, which can write best "
                  f"configurations; connect as {API!r} (reads, jobs and miss counts only; README, Credentials)")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or migrate the schema of TUNER_DB_URL to REVISION (default: head, with Optuna's tables)."""
    from db.session import DatabaseError, check_reachable
    from db.urls import redact
    from tuner.database import sqlite_path, upgrade_schema

    s = settings_mod.get()
    path = sqlite_path(s.db_url)
    try:
        check_reachable(s.db_url, create_dir=path is not None and "TUNER_DB_URL" not in s.extra["explicit"])
        granted = upgrade_schema(s.db_url, revision)
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    err.print(f"database {redact(s.db_url)} is at {revision}" + (f"; granted to {', '.join(granted)}" if granted else ""))
