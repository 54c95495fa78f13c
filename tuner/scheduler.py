"""`tuner scheduler`: Celery beat sending the nightly retune at the time of TUNER_RETUNE_CRON.

Beat only sends a message; a worker (any class; all listen on `tune.control`) runs the retune
under the database lease, so two schedulers at once still queue each stale key once.
"""
from __future__ import annotations

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
            "misses_max_jobs": settings.retune_misses_max_jobs, "misses_trials": settings.retune_misses_trials}


def run_scheduler(settings: Settings, loglevel: str = "INFO") -> None:
    from tuner.coordinator import broker_app

    schedule = parse_cron(settings.retune_cron)
    app = broker_app(settings)
    app.conf.beat_schedule = {"nightly-retune": {"task": RETUNE_TASK, "schedule": schedule,
                                                 "kwargs": retune_args(settings),
                                                 "options": {"queue": CONTROL_QUEUE}}}
    app.conf.timezone = "UTC"
    settings.home.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", loglevel, "--schedule", str(settings.home / "celerybeat-schedule")])
