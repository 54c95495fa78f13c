"""A worker process: its identity row, heartbeat, and the handling of trial batches.

Cooperation: every worker of a class works on the same Optuna study per key (ask/tell on
the shared RDB storage), a batch at a time. A batch that leaves budget sends the next batch
to the same queue; the worker that spends the budget claims the key's finalization with one
conditional UPDATE, so exactly one best row is written per key. Beside the heartbeat runs the
janitor (workers/janitor.py), which re-sends keys whose messages were lost.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from sqlalchemy import select, update

from db import models, store
from db.clock import utcnow
from db.session import session_scope
from devices.classes import DeviceClass
from devices.fingerprint import StackFingerprint
from harness.harness import Harness
from harness.protocol import Measurement
from search.finalize import finalize
from search.loop import SearchContext, counted_trials, run_batch, seed_configs, study_name
from workers.batch import BatchMessage
from workers.janitor import resend_stalled
from workers.retune import live_stacks, warm_seeds

log = logging.getLogger("tuner.worker")
FINAL_JOB_STATES = ("done", "failed", "cancelled")
DEFER_S = 1.0  # how long a worker waits before handing back a batch pinned to another stack


@dataclass(frozen=True)
class WorkerConfig:
    db_url: str
    device: str  # cpu | cuda:N
    name: str
    heartbeat_s: float = 10.0
    stall_s: float = 60.0
    trial_timeout_s: float = 120.0
    dead_after_s: float = 60.0  # a worker whose heartbeat is older is gone


class WorkerService:
    observe = None  # a factory of run_batch's on_trial callbacks, one per batch (workers/metrics.py)

    def __init__(self, cfg: WorkerConfig, dc: DeviceClass, fp: StackFingerprint, send):
        self.cfg, self.dc, self.fp, self.send = cfg, dc, fp, send
        self.harness = Harness()
        self._stop = threading.Event()
        with session_scope(cfg.db_url) as s:
            self.dc_id, self.fp_id = store.store_identity(s, dc.to_json(), {**fp.to_json(), "hash": fp.hash})
            row = s.scalar(select(models.Worker).where(models.Worker.name == cfg.name))
            if row is None:
                row = models.Worker(name=cfg.name)
                s.add(row)
            row.hostname, row.pid, row.device = socket.gethostname(), os.getpid(), cfg.device
            row.device_class_id, row.fingerprint_id = self.dc_id, self.fp_id
            row.started_at = row.heartbeat_at = utcnow()
            row.stopped_at = None
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
            s.execute(update(models.Worker).where(models.Worker.id == self.worker_id).values(stopped_at=utcnow()))

    def _beat(self) -> None:
        while not self._stop.wait(self.cfg.heartbeat_s):
            try:
                with session_scope(self.cfg.db_url) as s:
                    s.execute(update(models.Worker).where(models.Worker.id == self.worker_id)
                              .values(heartbeat_at=utcnow(), fingerprint_id=self.fp_id))
                resend_stalled(self.cfg.db_url, self.dc.slug, self.cfg.stall_s, self.send)
            except Exception:  # a database blip must not end the heartbeat thread
                log.exception("heartbeat failed")

    # ---- a batch -----------------------------------------------------------------------
    def handle(self, msg: BatchMessage, batch_trials: int) -> str:
        key = msg.tuning_key
        target = self.dc.target
        with session_scope(self.cfg.db_url) as s:
            job = s.get(models.Job, msg.job_id)
            key_row = s.get(models.JobKey, msg.job_key_id)
            if job is None or key_row is None or key_row.job_id != job.id:
                return "unknown job"
            if job.state in FINAL_JOB_STATES or key_row.state != "running":
                return f"job {job.state}, key {key_row.state}"
            measurement = Measurement.from_json(job.request.get("measurement"))
            name = study_name(key, self.dc.slug, self.fp.hash, measurement)
            pinned = self._pin(s, key_row.id, name)
            elsewhere = pinned != name and self._measured_by_live_workers(s, key, measurement, pinned)
            if not elsewhere:
                key_row.study_name = name  # where the stack or class that began the key is gone: here now
                s.execute(update(models.Job).where(models.Job.id == job.id, models.Job.state == "queued")
                          .values(state="running", started_at=utcnow()))
                key_row.enqueued_at = utcnow()
            job_request = job.request
        if elsewhere:
            # Live workers of another stack or class measure this key in their study: the batch
            # goes back to the queue for them, after a pause, so it does not bounce among ours.
            self._stop.wait(DEFER_S)
            self.send(msg)
            return f"key measured in study {pinned} by live workers of another stack or class; re-sent"
        ctx = SearchContext(db_url=self.cfg.db_url, job_id=msg.job_id, job_key_id=msg.job_key_id, key=key,
                            device=self.cfg.device, target=target, device_class_id=self.dc_id,
                            fingerprint_id=self.fp_id, study_name=name, sampler=msg.sampler, seed=msg.seed,
                            budget_trials=msg.budget_trials, trial_timeout_s=self.cfg.trial_timeout_s,
                            worker_id=self.worker_id, measurement=measurement)
        ran = run_batch(ctx, self.harness, batch_trials, should_stop=lambda: self._cancelled(msg.job_id),
                        seeds=lambda: seed_configs(ctx, first=warm_seeds(job_request, key.stable_hash)),
                        on_trial=self.observe() if self.observe else None)
        if self._cancelled(msg.job_id):
            return "cancelled"
        exhausted = ran < batch_trials  # the budget is spent, or the space has nothing left
        if not exhausted and counted_trials(self.cfg.db_url, msg.job_key_id) < msg.budget_trials:
            self.send(msg)
            return f"ran {ran}, next batch sent"
        if not self._claim_finalize(msg.job_key_id):
            return f"ran {ran}, another worker finalizes"
        result = finalize(ctx, self.harness, self.dc.slug)
        with session_scope(self.cfg.db_url) as s:
            key_row = s.get(models.JobKey, msg.job_key_id)
            key_row.state = "done" if result else "failed"
            key_row.trials_done = counted_trials(self.cfg.db_url, msg.job_key_id)
        self._finish_job(msg.job_id)
        return f"ran {ran}, finalized"

    @staticmethod
    def _pin(s, key_row_id: int, name: str) -> str:
        """The study the key is measured in: the first worker to take it names it (one conditional
        UPDATE, so two workers that take it at once agree), and every later batch goes there."""
        s.execute(update(models.JobKey).where(models.JobKey.id == key_row_id, models.JobKey.study_name == "")
                  .values(study_name=name))
        return s.scalar(select(models.JobKey.study_name).where(models.JobKey.id == key_row_id))

    def _measured_by_live_workers(self, s, key, measurement: Measurement, study: str) -> bool:
        return any(study_name(key, slug, fp, measurement) == study
                   for slug, fps in live_stacks(s, self.cfg.dead_after_s).items() for fp in fps)

    def _cancelled(self, job_id: str) -> bool:
        with session_scope(self.cfg.db_url) as s:
            return s.scalar(select(models.Job.state).where(models.Job.id == job_id)) == "cancelled"

    def _claim_finalize(self, job_key_id: int) -> bool:
        with session_scope(self.cfg.db_url) as s:
            return s.execute(update(models.JobKey).where(models.JobKey.id == job_key_id,
                                                         models.JobKey.state == "running")
                             .values(state="finalizing", enqueued_at=utcnow())).rowcount == 1

    def _finish_job(self, job_id: str) -> None:
        with session_scope(self.cfg.db_url) as s:
            states = s.scalars(select(models.JobKey.state).where(models.JobKey.job_id == job_id)).all()
            if all(st in ("done", "failed") for st in states):
                final = "done" if any(st == "done" for st in states) else "failed"
                s.execute(update(models.Job).where(models.Job.id == job_id, models.Job.state == "running")
                          .values(state=final, finished_at=utcnow(),
                                  error=None if final == "done" else "no configuration ran correctly"))
