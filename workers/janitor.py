"""The janitor every worker runs beside its heartbeat: a running key of its class whose messages
were lost (with a killed worker, or in a broker restarted without persistence) is re-sent.

A key with no trial and no batch started for `stall_s` is stalled; one worker re-sends it, the
one whose conditional UPDATE of the key's clock wins. Budgets are re-read before every trial and
finalization is claimed once, so a duplicate message costs nothing.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Callable

from sqlalchemy import func, select, update

from db import models
from db.clock import utcnow
from db.session import session_scope
from devices.classes import matches
from workers.batch import BatchMessage
from workers.queues import queue_for
from workers.retune import key_budget

log = logging.getLogger("tuner.worker")


def resend_stalled(db_url: str, slug: str, stall_s: float, send: Callable[[BatchMessage], None]) -> int:
    """Re-send a batch for every running key of class `slug` with no activity for stall_s seconds."""
    now = utcnow()
    cutoff = now - timedelta(seconds=stall_s)
    sent = 0
    with session_scope(db_url) as s:
        rows = s.execute(
            select(models.JobKey, models.Job)
            .join(models.Job, models.Job.id == models.JobKey.job_id)
            .where(models.Job.state.in_(("queued", "running")), models.Job.origin == "queued",
                   models.JobKey.state.in_(("running", "finalizing")))).all()
        for key_row, job in rows:
            if not matches(job.device_selector, slug):
                continue
            if key_row.state == "finalizing":
                # a finalizer that died: give the key back; its next batch finalizes it again
                if key_row.enqueued_at and key_row.enqueued_at < cutoff - 2 * (now - cutoff):
                    key_row.state = "running"
                else:
                    continue
            last = s.scalar(select(func.max(models.TuningTrial.created_at))
                            .where(models.TuningTrial.job_key_id == key_row.id))
            latest = max(t for t in (last, key_row.enqueued_at, job.created_at) if t)
            if latest > cutoff:
                continue
            claimed = s.execute(update(models.JobKey).where(
                models.JobKey.id == key_row.id,
                (models.JobKey.enqueued_at.is_(None)) | (models.JobKey.enqueued_at == key_row.enqueued_at))
                .values(enqueued_at=utcnow())).rowcount
            if claimed:
                s.commit()
                send(batch_message(job, key_row))
                log.warning("re-sent stalled key %s of job %s", key_row.id, job.id)
                sent += 1
    return sent


def batch_message(job: models.Job, key_row: models.JobKey, batch_trials: int = 4) -> BatchMessage:
    """The next batch of a key, from the job's rows."""
    return BatchMessage(job_id=job.id, job_key_id=key_row.id, key=key_row.key, sampler=job.sampler,
                        seed=job.seed, budget_trials=key_budget(job, key_row.key_hash),
                        batch_trials=job.request.get("batch_trials", batch_trials),
                        queue=queue_for(job.device_selector))
