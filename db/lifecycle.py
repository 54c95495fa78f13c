"""The one owner of a job's and a job key's life: their state names and every change of state.

A job is created QUEUED (or RUNNING, by `tuner tune`), runs, and ends DONE, FAILED or CANCELLED;
each of its keys is RUNNING from the job's creation, FINALIZING while one worker re-measures its
leaders, and ends DONE or FAILED. Several processes change these rows at once (workers, the
janitor, the CLI, the API), so every change is one conditional UPDATE here, named for what it
does, that only a row still in the expected state takes: an end is never overwritten. Nothing
else in the tree writes a job's or a key's state (tests/test_lifecycle.py reads the source).
"""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.clock import utcnow
from db.models import Job, JobKey, TuningTrial

QUEUED, RUNNING, FINALIZING, DONE, FAILED, CANCELLED = "queued", "running", "finalizing", "done", "failed", "cancelled"
JOB_STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)  # a job a worker may still work on
END_STATES = (DONE, FAILED, CANCELLED)  # a job's: never left
KEY_STATES = (RUNNING, FINALIZING, DONE, FAILED)
OPEN_KEY_STATES = (RUNNING, FINALIZING)  # a key a batch or a finalization may still be run for
KEY_END_STATES = (DONE, FAILED)
# where a job runs: on the fleet's workers through the queue, or in the `tuner tune` process that made it
QUEUED_ORIGIN, LOCAL_ORIGIN = "queued", "local"
NOTHING_RAN = "no configuration ran correctly"  # why a job whose every key failed without a reason failed


# ---- jobs -----------------------------------------------------------------------------------

def create_job(s: Session, *, kind: str, origin: str, kernel: str, kernel_version: str, keys: list[dict[str, Any]],
               key_hashes: list[str], sampler: str, seed: int | None, budget_trials: int, request: dict[str, Any],
               device_selector: str | None = None, device_class_id: int | None = None,
               state: str = QUEUED, study_names: list[str] | None = None) -> tuple[str, list[int]]:
    """A job row and one row per key (each RUNNING, stamped as just enqueued), in the caller's
    transaction: (job id, key row ids in the order of keys). `tuner tune`, `tuner submit` and the
    retunes all create jobs here."""
    job_id = uuid.uuid4().hex
    now = utcnow()
    s.add(Job(id=job_id, kind=kind, origin=origin, kernel=kernel, kernel_version=kernel_version,
              device_class_id=device_class_id, device_selector=device_selector, state=state, sampler=sampler,
              seed=seed, budget_trials=budget_trials, request=request, created_at=now,
              started_at=now if state == RUNNING else None))
    s.flush()
    rows = [JobKey(job_id=job_id, key_hash=h, key=k, study_name=(study_names or [""] * len(keys))[i],
                   state=RUNNING, enqueued_at=now) for i, (k, h) in enumerate(zip(keys, key_hashes))]
    s.add_all(rows)
    s.flush()
    return job_id, [r.id for r in rows]


def start_job(s: Session, job_id: str) -> bool:
    """A worker took the job's first batch: QUEUED -> RUNNING (a no-op once it runs)."""
    return bool(s.execute(update(Job).where(Job.id == job_id, Job.state == QUEUED)
                          .values(state=RUNNING, started_at=utcnow())).rowcount)


def finish_job(s: Session, job_id: str) -> str | None:
    """End an active job whose keys have all ended, in the caller's transaction (the one that ended
    its last key, or the janitor's): failed, with the keys' reasons, when a key failed with one;
    else done when a key is done; else failed (no configuration ran correctly). Returns the new
    state, or None when a key is still open or the job has already ended."""
    keys = s.execute(select(JobKey.state, JobKey.error).where(JobKey.job_id == job_id)).all()
    if not keys or any(st not in KEY_END_STATES for st, _ in keys):
        return None
    errors = sorted({e for _, e in keys if e})
    if errors:
        state, error = FAILED, "; ".join(errors)[:2000]
    elif any(st == DONE for st, _ in keys):
        state, error = DONE, None
    else:
        state, error = FAILED, NOTHING_RAN
    return state if _end_job(s, job_id, state, error) else None


def fail_job(s: Session, job_id: str, error: str) -> bool:
    """An active job that cannot go on (its messages could not be queued): FAILED with the reason."""
    return _end_job(s, job_id, FAILED, error)


def cancel_job(s: Session, job_id: str, error: str = "cancelled by user") -> str:
    """Cancel an active job; the job's state after (CANCELLED, or the end it had reached first)."""
    if _end_job(s, job_id, CANCELLED, error):
        return CANCELLED
    return s.scalar(select(Job.state).where(Job.id == job_id))


def end_local_job(s: Session, job_id: str, state: str, error: str | None) -> None:
    """A `tuner tune` job's end, which its own process writes whatever happened meanwhile (it ran
    every key itself): DONE, FAILED or CANCELLED (interrupted)."""
    assert state in END_STATES, state
    s.execute(update(Job).where(Job.id == job_id).values(state=state, error=error, finished_at=utcnow()))


def _end_job(s: Session, job_id: str, state: str, error: str | None) -> bool:
    return bool(s.execute(update(Job).where(Job.id == job_id, Job.state.in_(ACTIVE))
                          .values(state=state, finished_at=utcnow(), error=error)).rowcount)


def is_cancelled(s: Session, job_id: str) -> bool:
    return s.scalar(select(Job.state).where(Job.id == job_id)) == CANCELLED


# ---- keys -----------------------------------------------------------------------------------

def take_key(s: Session, job: Job, key_row: JobKey, study_name: str) -> None:
    """A worker measures the key's next batch in `study_name`: the job runs, the key's clock restarts."""
    key_row.study_name = study_name
    start_job(s, job.id)
    key_row.enqueued_at = utcnow()


def pin_study(s: Session, key_id: int, name: str) -> str:
    """The study the key is measured in: the first worker to take it names it (one conditional
    UPDATE, so two workers that take it at once agree), and every later batch goes there."""
    s.execute(update(JobKey).where(JobKey.id == key_id, JobKey.study_name == "").values(study_name=name))
    return s.scalar(select(JobKey.study_name).where(JobKey.id == key_id))


def claim_finalize(s: Session, key_id: int) -> int | None:
    """RUNNING -> FINALIZING for one worker: its attempt number, or None when another finalizes."""
    claimed = s.execute(update(JobKey).where(JobKey.id == key_id, JobKey.state == RUNNING)
                        .values(state=FINALIZING, enqueued_at=utcnow(),
                                finalize_attempts=JobKey.finalize_attempts + 1)).rowcount
    if claimed != 1:
        return None
    return s.scalar(select(JobKey.finalize_attempts).where(JobKey.id == key_id))


def finish_key(s: Session, job_id: str, key_id: int, attempt: int, state: str, error: str | None = None) -> bool:
    """FINALIZING -> DONE or FAILED, only while finalization `attempt` is still the key's (the
    fence against a finalizer taken over), with its counted trials; the job ends with its last key."""
    assert state in KEY_END_STATES, state
    trials = s.scalar(select(func.count()).select_from(TuningTrial).where(
        TuningTrial.job_key_id == key_id, TuningTrial.status != "invalid"))
    ended = s.execute(update(JobKey).where(JobKey.id == key_id, JobKey.state == FINALIZING,
                                           JobKey.finalize_attempts == attempt)
                      .values(state=state, error=error, trials_done=trials))
    if ended.rowcount != 1:
        return False
    finish_job(s, job_id)
    return True


def finalize_failed(s: Session, job_id: str, key_id: int, attempt: int, error: str, last: bool) -> None:
    """Finalization `attempt` failed: the key goes back to RUNNING to be finalized again, or, the
    `last` time, FAILED with the reason (and the job ends with its last key)."""
    s.execute(update(JobKey).where(JobKey.id == key_id, JobKey.state == FINALIZING,
                                   JobKey.finalize_attempts == attempt)
              .values(state=FAILED if last else RUNNING, error=error))
    if last:
        finish_job(s, job_id)


def fail_key(s: Session, job_id: str, key_id: int, error: str) -> bool:
    """A RUNNING key no worker can measure any more: FAILED with the reason, the job with its last key."""
    if not s.execute(update(JobKey).where(JobKey.id == key_id, JobKey.state == RUNNING)
                     .values(state=FAILED, error=error)).rowcount:
        return False
    finish_job(s, job_id)
    return True


def requeue_key(s: Session, key_row: JobKey) -> bool:
    """The janitor re-sends a stalled key: back to RUNNING with a fresh clock, only while its state
    and clock are what the janitor read (so two janitors re-send it once)."""
    same_clock = JobKey.enqueued_at.is_(None) if key_row.enqueued_at is None else JobKey.enqueued_at == key_row.enqueued_at
    return bool(s.execute(update(JobKey).where(JobKey.id == key_row.id, JobKey.state == key_row.state, same_clock)
                          .values(enqueued_at=utcnow(), state=RUNNING)).rowcount)


def fail_open_keys(s: Session, job_id: str, error: str) -> str | None:
    """A local job whose process is gone: its open keys FAILED with the reason, then the job ends."""
    s.execute(update(JobKey).where(JobKey.job_id == job_id, JobKey.state.in_(OPEN_KEY_STATES))
              .values(state=FAILED, error=error))
    return finish_job(s, job_id)


def end_local_key(s: Session, key_id: int, done: bool, trials: int) -> None:
    """A `tuner tune` key's end, written by the process that ran all of it."""
    s.execute(update(JobKey).where(JobKey.id == key_id).values(state=DONE if done else FAILED, trials_done=trials))
