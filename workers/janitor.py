"""The janitor every worker runs beside its heartbeat (one worker of a class at a time, under a
lease): what a crash, a lost message or a stopped process left behind is found and repaired.

  - A running key of its class that no live worker holds (workers.holding_key_id, rewritten with
    every heartbeat) and that had no trial and no batch started for `stall_s` lost its messages
    (with a killed worker, or in a broker restarted without persistence): it is re-sent, by the
    one worker whose conditional UPDATE of the key's clock wins. A slow trial of a live worker is
    never a stall. A `finalizing` key that no live worker holds lost its finalizer: it is given
    back and re-sent, and its next batch finalizes it again (the attempt is counted).
  - A job whose keys have all ended is ended (the transaction that ended its last key does that
    too); a local `tuner tune` job whose process is gone (same host) or that made no progress
    for longer than a batch can take is failed, so no crash leaves a job running for ever.
  - Optuna trials that nobody will tell (their worker died or stopped) are told their stored
    result, or failed and enqueued again (search.studies.recover_all).
  - Runtime miss rows not seen for TUNER_MISSES_KEEP_DAYS are deleted, once an hour across the
    fleet (the lease `prune-misses`, left to expire): the writers (the API, `tuner misses import`,
    a runtime's database sink) may only add and update rows, and stop adding at a row cap.
  - Rows of workers gone (stopped, or silent past the grace) for TUNER_WORKERS_KEEP_DAYS are
    deleted alike (the lease `prune-workers`), so the fleet's pages do not grow with every restart.
Budgets are re-read before every trial and finalization is claimed once, so a duplicate message
costs nothing.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Callable

from sqlalchemy import and_, delete, exists, func, or_, select, update

from db import lifecycle, models, store
from db.clock import utcnow
from db.session import session_scope
from devices.classes import matches
from search.studies import recover_all
from workers.batch import BatchMessage, batch_message
from workers.job_request import JobRequest, Runner

log = logging.getLogger("tuner.worker")


PRUNE_EVERY_S = 3600.0


def sweep(db_url: str, slug: str, send: Callable[[BatchMessage], None], *, holder: str, stall_s: float,
          dead_after_s: float, heartbeat_s: float, abandon_s: float, misses_keep_days: float,
          workers_keep_days: float) -> None:
    """One round of the janitor for a worker of class `slug`, if it holds the class's lease."""
    with session_scope(db_url) as s:
        if not store.acquire_lock(s, f"janitor:{slug}", holder, ttl_s=max(0.5, 0.9 * heartbeat_s)):
            return
    resend_stalled(db_url, slug, stall_s, dead_after_s, send)
    end_jobs(db_url, abandon_s)
    recover_all(db_url, heartbeat_s, dead_after_s)
    prune_misses(db_url, misses_keep_days)
    prune_gone_workers(db_url, workers_keep_days, dead_after_s, budget_s=heartbeat_s)


def prune_misses(db_url: str, keep_days: float) -> int:
    """Delete the miss rows older than keep_days, if no worker did within PRUNE_EVERY_S."""
    with session_scope(db_url) as s:
        # a holder of its own each time: the lease is taken again only once it has expired
        if not store.acquire_lock(s, "prune-misses", f"prune-{uuid.uuid4().hex}", ttl_s=PRUNE_EVERY_S):
            return 0
        pruned = store.prune_misses(s, keep_days)
    if pruned:
        log.info("pruned %d runtime miss row(s) not seen for %g days", pruned, keep_days)
    return pruned


PRUNE_WORKERS_BATCH = 50  # workers per transaction: each one's trials and claims are rewritten


def prune_gone_workers(db_url: str, keep_days: float, dead_after_s: float, budget_s: float | None = None) -> int:
    """Delete the rows of workers gone for keep_days, if no worker did within PRUNE_EVERY_S."""
    with session_scope(db_url) as s:
        if not store.acquire_lock(s, "prune-workers", f"prune-{uuid.uuid4().hex}", ttl_s=PRUNE_EVERY_S):
            return 0
    pruned = prune_in_batches(db_url, keep_days, dead_after_s, budget_s)
    if pruned:
        log.info("pruned %d worker row(s) gone for %g days", pruned, keep_days)
    return pruned


def prune_in_batches(db_url: str, keep_days: float, dead_after_s: float, budget_s: float | None = None) -> int:
    """prune_workers, PRUNE_WORKERS_BATCH workers a transaction, until none is left or budget_s has
    been spent. The janitor runs in the heartbeat thread, so it stops within its budget (a fleet's
    first prune rewrites a million trials: two minutes on PostgreSQL with 2 cores) and its next
    round an hour later goes on; the CLI has no budget."""
    start, total = time.monotonic(), 0
    while True:
        with session_scope(db_url) as s:
            n = prune_workers(s, keep_days, dead_after_s, limit=PRUNE_WORKERS_BATCH)
        total += n
        if n < PRUNE_WORKERS_BATCH or (budget_s is not None and time.monotonic() - start >= budget_s):
            return total


def prune_workers(s, keep_days: float, dead_after_s: float, limit: int | None = None) -> int:
    """Delete the rows of workers gone (stopped, or silent past the grace) for keep_days, never a
    live one, at most `limit` (oldest first): a fleet that restarts its workers under new names
    would otherwise keep thousands of dead rows. Their trials keep their results without the
    worker's name (tuning_trials.worker_id set to NULL first: that foreign key has no ON DELETE;
    revision 0007's indexes find them, and the trial claims the DELETE sets to NULL). Returns how
    many rows went."""
    W = models.Worker
    cutoff = utcnow() - timedelta(days=keep_days)
    last_seen = func.coalesce(W.stopped_at, W.heartbeat_at, W.started_at)
    # not live, written out: NOT of a comparison with a NULL heartbeat would be NULL, not true
    dead = or_(W.stopped_at.is_not(None), W.heartbeat_at.is_(None),
               W.heartbeat_at < utcnow() - timedelta(seconds=dead_after_s))
    gone = s.scalars(select(W.id).where(dead, last_seen < cutoff).order_by(last_seen, W.id).limit(limit)).all()
    if not gone:
        return 0
    s.execute(update(models.TuningTrial).where(models.TuningTrial.worker_id.in_(gone)).values(worker_id=None))
    return s.execute(delete(W).where(W.id.in_(gone))).rowcount


def live_holders(s, dead_after_s: float) -> set[int]:
    """The job keys that live workers hold now (their batch or finalization runs)."""
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    return set(s.scalars(select(models.Worker.holding_key_id).where(
        models.Worker.holding_key_id.is_not(None), models.Worker.stopped_at.is_(None),
        models.Worker.heartbeat_at >= cutoff)).all())


def resend_stalled(db_url: str, slug: str, stall_s: float, dead_after_s: float,
                   send: Callable[[BatchMessage], None]) -> int:
    """Re-send a batch for every open key of class `slug` that no live worker holds and that was idle
    for stall_s seconds; a `finalizing` one is given back to `running` first."""
    cutoff = utcnow() - timedelta(seconds=stall_s)
    sent = 0
    with session_scope(db_url) as s:
        held = live_holders(s, dead_after_s)
        rows = s.execute(
            select(models.JobKey, models.Job)
            .join(models.Job, models.Job.id == models.JobKey.job_id)
            .where(models.Job.state.in_(lifecycle.ACTIVE), models.Job.origin == lifecycle.QUEUED_ORIGIN,
                   models.JobKey.state.in_(lifecycle.OPEN_KEY_STATES))).all()
        for key_row, job in rows:
            if not matches(job.device_selector, slug) or key_row.id in held:
                continue
            last = s.scalar(select(func.max(models.TuningTrial.created_at))
                            .where(models.TuningTrial.job_key_id == key_row.id))
            latest = max(t for t in (last, key_row.enqueued_at, job.created_at) if t)
            if latest > cutoff:
                continue
            was = key_row.state
            if lifecycle.requeue_key(s, key_row):
                s.commit()
                send(batch_message(job, key_row))
                log.warning("re-sent stalled key %s of job %s%s", key_row.id, job.id,
                            " (its finalizer is gone)" if was == lifecycle.FINALIZING else "")
                sent += 1
    return sent


def _process_gone(runner: Runner) -> bool:
    """Whether the process that runs a local job is known to be gone: only on its own host."""
    if runner.host != socket.gethostname() or not isinstance(runner.pid, int):
        return False
    try:
        os.kill(runner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def end_jobs(db_url: str, abandon_s: float) -> int:
    """End the jobs a crash left running: those whose keys have all ended, and local ones whose
    `tuner tune` process is gone or made no progress for abandon_s seconds."""
    ended = 0
    with session_scope(db_url) as s:
        open_key = exists().where(and_(models.JobKey.job_id == models.Job.id,
                                       models.JobKey.state.in_(lifecycle.OPEN_KEY_STATES)))
        for job_id in s.scalars(select(models.Job.id).where(models.Job.state.in_(lifecycle.ACTIVE),
                                                            ~open_key)).all():
            if lifecycle.finish_job(s, job_id):
                log.warning("ended job %s, whose keys had all ended", job_id)
                ended += 1
        cutoff = utcnow() - timedelta(seconds=abandon_s)
        for job in s.scalars(select(models.Job).where(models.Job.origin == lifecycle.LOCAL_ORIGIN, models.Job.state == lifecycle.RUNNING)).all():
            runner = JobRequest.of(job).runner
            last = s.scalar(select(func.max(models.TuningTrial.created_at)).where(models.TuningTrial.job_id == job.id))
            touched = s.scalar(select(func.max(models.JobKey.enqueued_at)).where(models.JobKey.job_id == job.id))
            idle = max(t for t in (last, touched, job.started_at, job.created_at) if t) < cutoff
            if not (idle or (runner is not None and _process_gone(runner))):
                continue
            why = (f"the `tuner tune` process (pid {runner.pid} on {runner.host}) is gone"
                   if not idle else f"no progress for {abandon_s:.0f} s: the `tuner tune` process is gone")
            if lifecycle.fail_open_keys(s, job.id, why):
                log.warning("failed job %s: %s", job.id, why)
                ended += 1
    return ended
