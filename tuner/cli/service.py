"""Commands that run the service's long-lived processes (worker, scheduler, HTTP API) and the
schema upgrade."""
from __future__ import annotations

from typing import Optional

import typer

from tuner import settings as settings_mod
from tuner.cli.common import JsonOpt, app, db_app, err, print_json
from tuner.errors import UserError


# A worker or beat is one of a fleet that a supervisor (re)starts, often all at once after an
# outage: it waits for its services as long as it takes. `tuner serve` waits a minute: long enough
# for a database started beside it (compose) or restarted, short enough that an API pointed at
# the wrong host fails where its operator or supervisor sees it, instead of hanging with no port open.
SERVE_WAIT_S = 60.0


def wait_option(default: float | None, what: str):
    return typer.Option(default, "--wait-for-services", metavar="SECONDS",
                        help=f"While {what} does not answer, wait for it with back-off, saying so once a "
                             "minute, for at most SECONDS (0: fail at once)"
                             + (f"; default {default:g}." if default is not None else "; default: for ever."))


@app.command()
def worker(device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N"),
           name: Optional[str] = typer.Option(None, "--name", help="Worker node name (default: class-device-pid@host)."),
           loglevel: str = typer.Option("INFO", "--loglevel"),
           wait_s: Optional[float] = wait_option(None, "the database or the broker")) -> None:
    """Run a worker for one device: it consumes only the queues of its device class."""
    from tuner.worker_process import run_worker

    run_worker(settings_mod.get(), device, name, loglevel, wait_s)


@app.command()
def scheduler(loglevel: str = typer.Option("INFO", "--loglevel"),
              wait_s: Optional[float] = wait_option(None, "the broker")) -> None:
    """Run Celery beat: the nightly retune at TUNER_RETUNE_CRON (default '0 3 * * *', UTC)."""
    from tuner.scheduler import run_scheduler

    run_scheduler(settings_mod.get(), loglevel, wait_s)


@app.command()
def serve(host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; beyond the loopback "
                                   "interface a TUNER_API_TOKEN of 32 characters or more is required."),
          port: int = typer.Option(8000, "--port"), loglevel: str = typer.Option("info", "--loglevel"),
          open_reads: bool = typer.Option(False, "--open-reads", help="Reads need no token (a single user's "
                                          "laptop; loopback only; also TUNER_API_OPEN_READS=1). Writes still do."),
          wait_s: float = wait_option(SERVE_WAIT_S, "the database")) -> None:
    """The HTTP API, dashboard and /metrics (FastAPI on uvicorn; docs at /docs). Every request but
    /healthz needs TUNER_API_TOKEN, or TUNER_RUNTIME_TOKEN for the runtime's bundle and misses."""
    from dataclasses import replace

    from tuner.api.app import policy_of
    from tuner.api.app import serve as run
    from tuner.api.auth import check_bind, is_loopback
    from tuner.coordinator import await_services

    settings = replace(settings_mod.get(), api_open_reads=True) if open_reads else settings_mod.get()
    check_bind(host, policy_of(settings))  # before waiting: a misconfigured server fails at once
    # the database only: without the broker the API still serves every read (a submit is a 503)
    await_services(settings, wait_s, broker=False)
    if not settings.api_token and not settings.api_open_reads and is_loopback(host):  # elsewhere: refused
        err.print("note: no TUNER_API_TOKEN, so every request but /healthz will be refused; set one, or give "
                  "--open-reads for reads on this machine")
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
                  f"configurations; connect as {API!r} (reads, jobs and miss counts only; docs/fleet.md, Credentials)")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or migrate the schema of TUNER_DB_URL to REVISION (default: head, with Optuna's tables)."""
    from db.session import DatabaseError, check_reachable
    from db.urls import redact
    from tuner.db_open import sqlite_path, upgrade_schema

    s = settings_mod.get()
    path = sqlite_path(s.db_url)
    try:
        check_reachable(s.db_url, create_dir=path is not None and "TUNER_DB_URL" not in s.extra["explicit"])
        granted = upgrade_schema(s.db_url, revision)
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    err.print(f"database {redact(s.db_url)} is at {revision}" + (f"; granted to {', '.join(granted)}" if granted else ""))


workers_app = typer.Typer(no_args_is_help=True, help="The fleet's worker rows (the dashboard's fleet page lists them).")
app.add_typer(workers_app, name="workers")


@workers_app.command("prune")
def workers_prune(keep_days: Optional[float] = typer.Option(
        None, "--keep-days", help="Rows of workers gone this many days (default: TUNER_WORKERS_KEEP_DAYS)."),
        as_json: bool = JsonOpt) -> None:
    """Delete the rows of workers gone (stopped, or silent past the heartbeat grace) for KEEP_DAYS,
    never a live one: what every worker's janitor does once an hour."""
    from tuner.fleet import prune

    settings = settings_mod.get()
    days = settings.workers_keep_days if keep_days is None else keep_days
    pruned = prune(settings, days)
    if as_json:
        return print_json({"pruned": pruned, "keep_days": days})
    err.print(f"pruned {pruned} worker row(s) gone for {days:g} days or more")
