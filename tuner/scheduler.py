"""`tuner scheduler`: Celery beat sending the nightly retune at the time of TUNER_RETUNE_CRON.

Beat only sends a message; a worker (any class; all listen on `tune.control`) runs the retune
under the database lease, so two schedulers at once still queue each stale key once. Beat's
state (when each entry last ran) is kept as JSON in a file of the owner's only, never in Celery's
default pickle shelve, which would run whatever code a writer of TUNER_HOME put there.
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from celery import beat

from tuner.errors import UserError
from tuner.settings import Settings
from workers.queues import CONTROL_QUEUE, RETUNE_TASK


def parse_cron(expr: str):
    from celery.schedules import crontab

    fields = expr.split()
    if len(fields) != 5:
        raise UserError(f"TUNER_RETUNE_CRON={expr!r} must have 5 fields: minute hour day month weekday, "
                        "e.g. '0 3 * * *'")
    minute, hour, day, month, weekday = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday)
    except Exception as exc:
        raise UserError(f"TUNER_RETUNE_CRON={expr!r} is not a valid cron expression: {exc}") from None


def retune_args(settings: Settings) -> dict:
    return {"dead_after_s": settings.worker_dead_after_s, "budget_fraction": settings.retune_budget_fraction,
            "batch_trials": settings.batch_trials, "misses": settings.retune_misses,
            "misses_max_jobs": settings.retune_misses_max_jobs, "misses_trials": settings.retune_misses_trials,
            "parallel": settings.retune_parallel}


SCHEDULE_FILE = "beat-schedule.json"


class JsonScheduler(beat.Scheduler):
    """Beat's scheduler with its state (each entry's last run) in a JSON file (0600), so a restarted
    beat neither repeats nor skips a run; the file holds data only."""

    def __init__(self, *args, schedule_filename: str | None = None, **kwargs):
        self.path = Path(schedule_filename or SCHEDULE_FILE)
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            saved = {}
        self.merge_inplace(self.app.conf.beat_schedule)
        for name, entry in self.schedule.items():
            if isinstance(saved.get(name), str):
                entry.last_run_at = datetime.fromisoformat(saved[name])
        self.install_default_entries(self.schedule)
        self.sync()

    def sync(self) -> None:
        from tuner.formats.bundle import write_atomic

        state = {name: entry.last_run_at.isoformat() for name, entry in self.schedule.items() if entry.last_run_at}
        write_atomic(self.path, json.dumps(state, indent=1, sort_keys=True), mode=0o600)

    def close(self) -> None:
        self.sync()


def run_scheduler(settings: Settings, loglevel: str = "INFO", wait_s: float | None = None) -> None:
    from db.session import private_dir
    from tuner.coordinator import await_services, broker_app

    schedule = parse_cron(settings.retune_cron)
    await_services(settings, wait_s, database=False)  # beat only sends; a worker reads the database
    app = broker_app(settings)
    app.conf.beat_schedule = {"nightly-retune": {"task": RETUNE_TASK, "schedule": schedule,
                                                 "kwargs": retune_args(settings),
                                                 "options": {"queue": CONTROL_QUEUE}}}
    app.conf.timezone = "UTC"
    private_dir(settings.home)
    app.start(["beat", "--loglevel", loglevel, "--scheduler", f"{JsonScheduler.__module__}:{JsonScheduler.__name__}",
               "--schedule", os.fspath(settings.home / SCHEDULE_FILE)])
