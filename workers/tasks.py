"""The Celery task a worker runs: one trial batch, its message validated before any use."""
from __future__ import annotations

import logging

from celery import Celery

from workers.app import BATCH_TASK
from workers.batch import BatchMessage

log = logging.getLogger("tuner.worker")


def register(app: Celery, service) -> None:
    @app.task(name=BATCH_TASK, bind=True)
    def trial_batch(task, payload=None, *args, **kwargs):
        try:
            if args or kwargs:
                raise ValueError("trial_batch takes exactly one JSON object")
            msg = BatchMessage.from_json(payload)
        except ValueError as exc:
            # a bad message is dropped (acked) and logged; it never reaches the harness
            log.error("rejected message %s: %s", task.request.id, exc)
            return {"rejected": str(exc)}
        outcome = service.handle(msg, msg.batch_trials)
        log.info("job %s key %s: %s", msg.job_id, msg.job_key_id, outcome)
        return {"outcome": outcome}
