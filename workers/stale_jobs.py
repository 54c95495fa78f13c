"""Nightly retune: find best configurations tuned under a stack that live workers no longer run,
and queue warm-started retune jobs for them, once.

A best row is stale for a device class when a live worker of that class reports a stack
fingerprint other than the row's, and no current best for the same kernel version and key
exists under the worker's fingerprint yet. A retune job for such a key re-measures the old best
first, then the old top-k, then searches with a fraction of the original budget.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Callable

from sqlalchemy import select

from db import lifecycle, models, store
from db.clock import utcnow
from db.session import session_scope
from devices.fit import host_memory, unfit
from harness.protocol import Measurement
from search_spaces import registry
from keys import SpecError, TuningKey
from workers.batch import BatchMessage, batch_message
from workers.job_request import JobRequest, WarmStart

LOCK = "retune"
TOP_K = 3
# why a drop-in kernel's key is not queued (here and workers/miss_jobs.py): no trial could make its inputs
UNSIGNED = ("a drop-in kernel's key with no launch recorded: its inputs cannot be rebuilt "
            "(launch it in a model process with TUNER_DB_URL set)")
MIN_BUDGET = 4  # trials a retune key gets at least, whatever TUNER_RETUNE_BUDGET_FRACTION leaves


@dataclass(frozen=True)
class StaleKey:
    kernel: str
    kernel_version: str
    key_hash: str
    key: dict
    device_class: str  # slug
    old_fingerprint: str
    new_fingerprints: tuple[str, ...]  # the live stacks of the class with no current best for the key
    old_best_id: int
    old_config: dict
    old_ms: float
    old_trials: int
    measurement: Measurement = Measurement()  # how the old best was timed; the retune times alike


def live_stacks(s, dead_after_s: float) -> dict[str, set[str]]:
    """device-class slug -> fingerprint hashes that live workers of the class report now."""
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    rows = s.execute(select(models.DeviceClass.slug, models.StackFingerprint.hash, models.Worker.heartbeat_at)
                     .join(models.Worker, models.Worker.device_class_id == models.DeviceClass.id)
                     .join(models.StackFingerprint, models.StackFingerprint.id == models.Worker.fingerprint_id)
                     .where(models.Worker.stopped_at.is_(None))).all()
    out: dict[str, set[str]] = {}
    for slug, fp, beat in rows:
        if beat and beat >= cutoff:
            out.setdefault(slug, set()).add(fp)
    return out


def _active_retunes(s) -> set[tuple[str, str]]:
    """(key_hash, device_selector) of keys in retune jobs that are queued or running."""
    rows = s.execute(select(models.JobKey.key_hash, models.Job.device_selector)
                     .join(models.Job, models.Job.id == models.JobKey.job_id)
                     .where(models.Job.kind == "retune", models.Job.state.in_(lifecycle.ACTIVE))).all()
    return {(h, sel) for h, sel in rows}


def find_stale(s, *, dead_after_s: float, device_class: Callable[[str], bool] | None = None,
               kernel: str | None = None, stale_only: bool = True) -> list[StaleKey]:
    stacks = live_stacks(s, dead_after_s)
    rows = [(b, slug, fp.hash) for b, slug, fp in store.best_configs(s, kernel=kernel)]
    current = {(b.kernel, b.kernel_version, b.key_hash, slug, fp) for b, slug, fp in rows}
    active = _active_retunes(s)
    measurements = {job.id: JobRequest.of(job).measurement for job in s.scalars(
        select(models.Job).where(models.Job.id.in_({b.job_id for b, _, _ in rows if b.job_id}))).all()}
    out: dict[tuple, StaleKey] = {}
    for b, slug, fp in rows:
        if device_class is not None and not device_class(slug):
            continue
        if (b.key_hash, slug) in active:
            continue  # a retune of this key is already queued or running
        # already tuned under a live stack: not stale for it
        lacking = tuple(live for live in sorted(stacks.get(slug, ()))
                        if not stale_only or (b.kernel, b.kernel_version, b.key_hash, slug, live) not in current)
        if not lacking:
            continue
        # One retune per key and class, however many live stacks lack it (a rolling upgrade runs
        # two): any worker of the class may take the job. Of several stale rows, the newest (the
        # first: rows come newest first) wins.
        measurement = measurements.get(b.job_id, Measurement())
        out.setdefault((b.kernel, b.kernel_version, b.key_hash, slug), StaleKey(
            b.kernel, b.kernel_version, b.key_hash, b.key, slug, fp, lacking, b.id, b.config, b.median_ms,
            b.trials, measurement))
    return sorted(out.values(), key=lambda st: st.old_best_id)


def fitting(stale: list[StaleKey]) -> tuple[list[StaleKey], list[dict]]:
    """(the stale keys whose trial fits their class's memory, the others with the reason): a key
    `tuner submit` would refuse (devices/fit.py; the CPU class: this host's memory) is not queued."""
    keep, skipped, host_bytes = [], [], host_memory()
    for st in stale:
        try:
            spec = registry.get(st.kernel)
        except SpecError:  # not loaded where the retune runs: its workers judge it, as before
            why = None
        else:
            why = unfit(spec, [TuningKey.from_json(st.key)], st.device_class, f"device class {st.device_class}",
                        input_sets=st.measurement.rotate_buffers, cuda_graph=st.measurement.cuda_graph,
                        host_bytes=host_bytes)
        if why is None:
            keep.append(st)
        else:
            skipped.append({"kernel": st.kernel, "device_class": st.device_class, "key": st.key["dims"],
                            "dtype": st.key["dtype"], "reason": why})
    return keep, skipped


def signed(s, stale: list[StaleKey]) -> tuple[list[StaleKey], list[dict]]:
    """(the stale keys, a drop-in kernel's each with the launch signature its trial inputs are
    rebuilt from (store.launch_signatures: a best row's key carries none), the drop-in keys no
    launch of which was recorded, with the reason): a key no trial could make inputs for is not queued."""
    keep, skipped, found = [], [], {}
    for st in stale:
        try:
            needs = registry.get(st.kernel).needs_signature
        except SpecError:  # not loaded where the retune runs: its workers judge it, as before
            needs = False
        if not needs:
            keep.append(st)
            continue
        group = (st.kernel, st.kernel_version)
        if group not in found:
            hashes = [k.key_hash for k in stale if (k.kernel, k.kernel_version) == group]
            found[group] = store.launch_signatures(s, kernel=st.kernel, kernel_version=st.kernel_version,
                                                   key_hashes=hashes)
        sig = found[group].get(st.key_hash)
        if sig is not None:
            keep.append(replace(st, key={**st.key, "signature": sig}))
        else:
            skipped.append({"kernel": st.kernel, "device_class": st.device_class, "key": st.key["dims"],
                            "dtype": st.key["dtype"], "reason": UNSIGNED})
    return keep, skipped


def top_configs(s, stale: StaleKey, k: int = TOP_K) -> list[dict]:
    """The old study's k fastest distinct configurations (ok trials), for the warm start."""
    rows = s.execute(select(models.TuningTrial.config, models.TuningTrial.config_hash, models.TuningTrial.median_ms)
                     .join(models.DeviceClass, models.DeviceClass.id == models.TuningTrial.device_class_id)
                     .join(models.StackFingerprint, models.StackFingerprint.id == models.TuningTrial.fingerprint_id)
                     .where(models.TuningTrial.kernel == stale.kernel, models.TuningTrial.key_hash == stale.key_hash,
                            models.DeviceClass.slug == stale.device_class,
                            models.StackFingerprint.hash == stale.old_fingerprint,
                            models.TuningTrial.status == "ok")
                     .order_by(models.TuningTrial.median_ms)).all()
    seen, out = set(), []
    for config, h, _ in rows:
        if h not in seen:
            seen.add(h)
            out.append(config)
        if len(out) == k:
            break
    return out


def enqueue_stale(db_url: str, send: Callable[[BatchMessage], None], *, holder: str, dead_after_s: float,
                  budget_fraction: float, device_class: Callable[[str], bool] | None = None,
                  kernel: str | None = None, stale_only: bool = True, dry_run: bool = False,
                  batch_trials: int, parallel: int,
                  run_id: str | None = None) -> dict:
    """Queue one retune job per (kernel, device class); returns what was (or would be) queued, and
    the stale keys skipped because their trial does not fit the class, with the reason.

    The lease makes concurrent schedulers safe: the second waits nothing and finds the keys
    already active, so it queues nothing."""
    run_id = run_id or uuid.uuid4().hex[:12]
    with session_scope(db_url) as s:
        if not dry_run and not store.acquire_lock(s, LOCK, holder, ttl_s=300):
            return {"run": run_id, "locked_by_other": True, "jobs": [], "skipped": []}
    try:
        with session_scope(db_url) as s:
            stale, skipped = fitting(find_stale(s, dead_after_s=dead_after_s, device_class=device_class,
                                                kernel=kernel, stale_only=stale_only))
            stale, unsigned = signed(s, stale)
            skipped += unsigned
            # a job times all its keys one way: keys tuned with other measurement options go apart
            groups: dict[tuple[str, str, str, Measurement], list[StaleKey]] = {}
            for st in stale:
                groups.setdefault((st.kernel, st.kernel_version, st.device_class, st.measurement), []).append(st)
            planned, messages = [], []
            for (kern, version, slug, measurement), keys in groups.items():
                budgets = {st.key_hash: max(MIN_BUDGET, int(round(st.old_trials * budget_fraction))) for st in keys}
                warm = {st.key_hash: WarmStart(st.old_best_id, st.old_config, st.old_ms, st.old_fingerprint,
                                               tuple(st.new_fingerprints), st.old_trials, tuple(top_configs(s, st)))
                        for st in keys}
                planned.append({"kernel": kern, "device_class": slug, "keys": [st.key["dims"] | {"dtype": st.key["dtype"]}
                                                                                for st in keys],
                                "budgets": list(budgets.values()), "old_fingerprint": sorted({st.old_fingerprint for st in keys}),
                                "new_fingerprint": sorted({fp for st in keys for fp in st.new_fingerprints}),
                                "measurement": measurement.to_json()})
                if dry_run:
                    continue
                request = JobRequest(kern, tuple(st.key for st in keys), max(budgets.values()), seed=0,
                                     measurement=measurement, batch_trials=batch_trials, budgets=budgets, warm=warm,
                                     retune_run=run_id)
                job_id, key_ids = lifecycle.create_job(
                    s, kind="retune", origin=lifecycle.QUEUED_ORIGIN, kernel=kern, kernel_version=version,
                    keys=[st.key for st in keys], key_hashes=[st.key_hash for st in keys], sampler=request.sampler,
                    seed=request.seed, budget_trials=request.trials, request=request.to_json(), device_selector=slug)
                job = s.get(models.Job, job_id)
                for key_id in key_ids:
                    messages += [batch_message(job, s.get(models.JobKey, key_id))] * parallel
                planned[-1]["job"] = job_id
        for msg in messages:  # after commit, so a worker never sees a message before its rows
            send(msg)
        return {"run": run_id, "locked_by_other": False, "dry_run": dry_run, "jobs": planned, "skipped": skipped}
    finally:
        if not dry_run:
            with session_scope(db_url) as s:
                store.release_lock(s, LOCK, holder)

