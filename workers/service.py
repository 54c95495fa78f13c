"""A worker process: its identity row, heartbeat, and the handling of trial batches.

Cooperation: every worker of a class works on the same Optuna study per key (ask/tell on
the shared RDB storage), a batch at a time. A batch that leaves budget sends the next batch
to the same queue; the worker that spends the budget claims the key's finalization with one
conditional UPDATE, which also counts the attempt and is the finalizer's fencing token, so
exactly one finalization ends a key. Beside the heartbeat runs the janitor (workers/janitor.py).

Trust: a message only points at a job key. Its every field is compared with what the job's rows
say (`workers.batch.batch_message`), a message that disagrees, or that names a job of another
device class, is refused, and everything used or re-sent comes from the rows.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from sqlalchemy import select, update

from db import lifecycle, models, store
from db.clock import utcnow
from db.session import session_scope
from devices.classes import DeviceClass, check_device_name, matches
from devices.fingerprint import StackFingerprint
from harness.harness import Harness
from harness.protocol import Measurement
from search.finalize import MAX_RUNS, Superseded, finalize
from search.loop import SearchContext, counted_trials, run_batch, seed_configs, study_name
from workers.batch import BatchMessage, batch_message, disagreements
from workers.faults import infrastructure
from workers.janitor import sweep
from workers.job_request import JobRequest
from workers.stale_jobs import live_stacks

log = logging.getLogger("tuner.worker")
DEFER_S = 1.0  # how long a worker waits before handing back a batch meant for another stack
MAX_FINALIZE_ATTEMPTS = 3  # a key whose finalization fails this often is failed, with the reason


def longest_batch_s(batch_trials: int, trial_timeout_s: float) -> float:
    """The longest a batch can run: each trial a compile and a measurement (a timeout each), then
    the key's finalization. The broker's visibility timeout must exceed it, or a live batch is
    delivered again."""
    return (2 * batch_trials + MAX_RUNS) * trial_timeout_s


@dataclass(frozen=True)
class WorkerConfig:
    db_url: str
    device: str  # cpu | cuda:N
    name: str
    # the rest from tuner/settings.py, their one owner (tuner.worker_process.worker_config): no defaults
    # here to disagree with them
    heartbeat_s: float
    stall_s: float
    trial_timeout_s: float
    dead_after_s: float  # a worker whose heartbeat is older is gone
    batch_trials: int
    misses_keep_days: float  # the janitor prunes runtime miss rows not seen for this long
    workers_keep_days: float  # and the rows of workers gone this long


class WorkerService:
    observe = None  # a factory of run_batch's on_trial callbacks, one per batch (workers/metrics.py)

    def __init__(self, cfg: WorkerConfig, dc: DeviceClass, fp: StackFingerprint, send):
        self.cfg, self.dc, self.fp, self.send = cfg, dc, fp, send
        self.harness = Harness()
        self.holding: int | None = None  # the job key of the batch this worker runs now
        self._first: dict[int, list] = {}  # job key -> what its batches measure first
        self._stop = threading.Event()
        check_device_name(dc.device_name)  # before it is stored: exports make file names of it
        with session_scope(cfg.db_url) as s:
            self.dc_id, self.fp_id = store.store_identity(s, dc.to_json(), {**fp.to_json(), "hash": fp.hash})
            row = s.scalar(select(models.Worker).where(models.Worker.name == cfg.name))
            if row is None:
                row = models.Worker(name=cfg.name)
                s.add(row)
            row.hostname, row.pid, row.device = socket.gethostname(), os.getpid(), cfg.device
            row.device_class_id, row.fingerprint_id = self.dc_id, self.fp_id
            row.started_at = row.heartbeat_at = utcnow()
            row.stopped_at = row.holding_key_id = None
            s.flush()
            self.worker_id = row.id
        self._thread = threading.Thread(target=self._beat, name="tuner-heartbeat", daemon=True)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Heartbeat, and the harness's processes started before the first message is taken, so
        no job waits on their startup (seconds on a GPU: torch, triton, a context per process)."""
        self._thread.start()
        try:
            self.harness.start(self.cfg.device)
        except RuntimeError as exc:  # the first trial tries again and reports it there
            log.warning("benchmark process for %s did not start: %s", self.cfg.device, exc)

    def stop(self) -> None:
        self._stop.set()
        self.harness.close()
        with session_scope(self.cfg.db_url) as s:
            s.execute(update(models.Worker).where(models.Worker.id == self.worker_id)
                      .values(stopped_at=utcnow(), holding_key_id=None))

    def wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _beat(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_s):
            try:
                # what the worker holds is written from memory with every beat, by this thread only
                with session_scope(self.cfg.db_url) as s:
                    s.execute(update(models.Worker).where(models.Worker.id == self.worker_id)
                              .values(heartbeat_at=utcnow(), fingerprint_id=self.fp_id, holding_key_id=self.holding))
                sweep(self.cfg.db_url, self.dc.slug, self.send, holder=self.cfg.name, stall_s=self.cfg.stall_s,
                      dead_after_s=self.cfg.dead_after_s, heartbeat_s=self.cfg.heartbeat_s,
                      abandon_s=longest_batch_s(self.cfg.batch_trials, self.cfg.trial_timeout_s),
                      misses_keep_days=self.cfg.misses_keep_days, workers_keep_days=self.cfg.workers_keep_days)
            except Exception as exc:  # a database blip must not end the heartbeat thread
                if infrastructure(exc):
                    log.warning("heartbeat failed: %s", str(exc).splitlines()[0][:300])
                else:
                    log.exception("heartbeat failed")

    # ---- a batch -----------------------------------------------------------------------
    def handle(self, msg: BatchMessage) -> str:
        """Run the batch a message points at. An infrastructure error propagates (the task puts
        the message back); a message that disagrees with its job's rows is refused."""
        with session_scope(self.cfg.db_url) as s:
            job = s.get(models.Job, msg.job_id)
            key_row = s.get(models.JobKey, msg.job_key_id)
            if job is None or key_row is None or key_row.job_id != job.id:
                return f"refused: no job {msg.job_id} with key {msg.job_key_id}"
            rows = batch_message(job, key_row)
            wrong = disagreements(msg, rows)
            if wrong:
                return f"refused: the message disagrees with job {job.id} on {', '.join(wrong)}"
            if not job.device_selector or not matches(job.device_selector, self.dc.slug):
                return f"refused: job {job.id} is for device class {job.device_selector}, this worker is {self.dc.slug}"
            if job.state in lifecycle.END_STATES or key_row.state != lifecycle.RUNNING:
                return f"job {job.state}, key {key_row.state}"
            request = JobRequest.of(job)
            measurement = request.measurement
            key = rows.tuning_key
            name = study_name(key, self.dc.slug, self.fp.hash, measurement)
            elsewhere = self._elsewhere(s, job, request, key_row, key, measurement, name)
            if elsewhere is None:
                # where the stack or class that began the key is gone: here now
                lifecycle.take_key(s, job, key_row, name)
        if elsewhere is not None:
            if elsewhere.startswith("failed"):
                return elsewhere
            # Live workers of another stack or class measure this key: the batch goes back to the
            # queue for them, after a pause, so it does not bounce among ours.
            self._stop.wait(DEFER_S)
            self.send(rows)
            return f"{elsewhere}; re-sent"
        return self._run(rows, key, name, measurement, request)

    def _run(self, msg: BatchMessage, key, name: str, measurement: Measurement, request: JobRequest) -> str:
        ctx = SearchContext(db_url=self.cfg.db_url, job_id=msg.job_id, job_key_id=msg.job_key_id, key=key,
                            device=self.cfg.device, target=self.dc.target, device_class_id=self.dc_id,
                            fingerprint_id=self.fp_id, study_name=name, sampler=msg.sampler, seed=msg.seed,
                            budget_trials=msg.budget_trials, trial_timeout_s=self.cfg.trial_timeout_s,
                            worker_id=self.worker_id, measurement=measurement, heartbeat_s=self.cfg.heartbeat_s,
                            grace_s=self.cfg.dead_after_s, signature=msg.key.get("signature"))
        first = self._first.get(msg.job_key_id)
        if first is None:  # once per key: the nearest stored shapes' bests and the strategy's seeds
            if len(self._first) > 256:
                self._first.clear()
            first = self._first[msg.job_key_id] = seed_configs(ctx, first=request.warm_seeds(key.stable_hash))
        batch = run_batch(ctx, self.harness, msg.batch_trials, should_stop=lambda: self._cancelled(msg.job_id),
                          first=first, on_trial=self.observe() if self.observe else None)
        if self._cancelled(msg.job_id):
            return "cancelled"
        if not batch.exhausted and counted_trials(self.cfg.db_url, msg.job_key_id) < msg.budget_trials:
            self.send(msg)
            return f"ran {batch.ran}, next batch sent"
        attempt = self._claim_finalize(msg.job_key_id)
        if attempt is None:
            return f"ran {batch.ran}, another worker finalizes"
        return f"ran {batch.ran}, " + self._finalize(ctx, msg, attempt)

    def _finalize(self, ctx: SearchContext, msg: BatchMessage, attempt: int) -> str:
        def end(state: str):
            """The key's end, in the caller's transaction, only while this finalization is still
            the key's (its attempt number is the fence); the job's end with its last key."""
            return lambda s: lifecycle.finish_key(s, msg.job_id, msg.job_key_id, attempt, state)

        try:
            result = finalize(ctx, self.harness, self.dc.slug, guard=end(lifecycle.DONE))
        except Superseded:
            return "another finalizer took the key over"
        except Exception as exc:
            if infrastructure(exc):
                raise  # the message goes back; the janitor gives the key back when no live worker holds it
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            log.exception("finalization %d of job %s key %s failed", attempt, msg.job_id, msg.job_key_id)
            return self._finalize_failed(msg, attempt, reason)
        if result is None:
            with session_scope(self.cfg.db_url) as s:
                end(lifecycle.FAILED)(s)  # no error of its own: the job's end says it (lifecycle.finish_job)
            return f"finalized: {lifecycle.NOTHING_RAN}"
        return "finalized" + (" (the current best stays)" if result.kept else "")

    def _finalize_failed(self, msg: BatchMessage, attempt: int, reason: str) -> str:
        last = attempt >= MAX_FINALIZE_ATTEMPTS
        with session_scope(self.cfg.db_url) as s:
            error = f"finalization failed {attempt} times, last: {reason}" if last else reason
            lifecycle.finalize_failed(s, msg.job_id, msg.job_key_id, attempt, error, last)
        if last:
            return f"finalization failed {attempt} times; key failed: {reason}"
        self.send(msg)  # its next batch finds the budget spent and finalizes again
        return f"finalization {attempt} of {MAX_FINALIZE_ATTEMPTS} failed ({reason}); tried again"

    def _elsewhere(self, s, job, request: JobRequest, key_row, key, measurement: Measurement, name: str) -> str | None:
        """Why this worker does not measure the key (None: it does). A retune key is measured only
        by a worker of a stack it was queued for; any key, in the study the first worker to take it
        named, while a live worker of that study's stack and class exists."""
        stacks = live_stacks(s, self.cfg.dead_after_s)
        if job.kind == "retune":
            warm = request.warm.get(key_row.key_hash)
            wanted = set(warm.new_fingerprints if warm else ())
            if wanted and self.fp.hash not in wanted:
                if any(fps & wanted for slug, fps in stacks.items() if matches(job.device_selector, slug)):
                    return f"retune key queued for stack {','.join(sorted(wanted))}, this worker runs {self.fp.hash}"
                error = (f"no live worker runs stack {','.join(sorted(wanted))} any more; the next `tuner retune` "
                         "queues the key again while it is stale")
                lifecycle.fail_key(s, job.id, key_row.id, error)
                return f"failed: {error}"
        pinned = lifecycle.pin_study(s, key_row.id, name)
        if pinned != name and any(study_name(key, slug, fp, measurement) == pinned
                                  for slug, fps in stacks.items() for fp in fps):
            return f"key measured in study {pinned} by live workers of another stack or class"
        return None

    def hold(self, key_row_id: int | None) -> None:
        """The key this worker runs now (None: none), for every message from its receipt
        (workers/tasks.py). The heartbeat writes it to the worker's row, the only writer of that
        column, within TUNER_HEARTBEAT_S, shorter than TUNER_STALL_S: the janitor sees it before
        it could take the batch for a lost one, at no cost to a batch."""
        self.holding = key_row_id

    def _cancelled(self, job_id: str) -> bool:
        with session_scope(self.cfg.db_url) as s:
            return lifecycle.is_cancelled(s, job_id)

    def _claim_finalize(self, job_key_id: int) -> int | None:
        """This worker's finalization attempt number, or None when another worker finalizes."""
        with session_scope(self.cfg.db_url) as s:
            return lifecycle.claim_finalize(s, job_key_id)
