"""Production misses as tuning work: the keys model processes were served most often from a
fallback level (db.store.misses), queued as tuning jobs on the class that saw them.

Run by `tuner retune --misses` and by the nightly retune task. Per device class with live
workers, the most frequent missed keys become one job each (kind `miss`, sampler `auto`, so the
search starts from the default, the nearest stored shapes' bests and the known-good list). A key
is skipped while a job of its class is queued or running for it, once it is tuned under a stack
that live workers of the class run, when its kernel version is not the one registered here
(a worker would refuse it), and when its trial does not fit the class's memory (devices/fit.py,
the check of `tuner submit`; the CPU class: this host's). A database lease makes two runs at
once queue each key once.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Callable

from sqlalchemy import select

from db import lifecycle, models, store
from db.session import session_scope
from devices.classes import matches
from devices.fit import host_memory, unfit
from search_spaces import registry
from keys import SpecError, TuningKey
from workers.batch import BatchMessage, batch_message
from workers.job_request import JobRequest, MissOrigin
from workers.stale_jobs import UNSIGNED, live_stacks

LOCK = "retune-misses"
MIN_COUNT = 1  # the fewest misses that make a key worth a job, unless `--min-count` says otherwise


@dataclass(frozen=True)
class MissedKey:
    """One key of one class, its misses summed over stacks and levels."""

    kernel: str
    kernel_version: str
    key_hash: str
    key: dict
    device_class: str
    count: int
    levels: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "device_class": self.device_class, "key": self.key["dims"],
                "dtype": self.key["dtype"], "count": self.count, "levels": list(self.levels)}


def missed_keys(s, *, kernel: str | None = None, device_class: Callable[[str], bool] | None = None,
                min_count: int = MIN_COUNT) -> list[MissedKey]:
    """Untuned missed keys, most frequent first (counts summed per key and class)."""
    summed: dict[tuple, list] = {}
    for m in store.misses(s, kernel=kernel):
        if device_class is not None and not device_class(m.device_class):
            continue
        k = (m.kernel, m.kernel_version, m.key_hash, m.device_class)
        row = summed.setdefault(k, [m.key, 0, set()])
        row[1] += m.count
        row[2].add(m.level)
    keys = [MissedKey(*k[:3], key, k[3], n, tuple(sorted(levels))) for k, (key, n, levels) in summed.items()
            if n >= min_count]
    return sorted(keys, key=lambda mk: (-mk.count, mk.kernel, mk.key_hash))


def _active(s) -> list[tuple[str, str]]:
    """(key_hash, device selector) of every key in a queued or running job."""
    return list(s.execute(select(models.JobKey.key_hash, models.Job.device_selector)
                          .join(models.Job, models.Job.id == models.JobKey.job_id)
                          .where(models.Job.state.in_(lifecycle.ACTIVE))).all())


def _why_not(mk: MissedKey, stacks: dict[str, set[str]], active: list, current: set,
             host_bytes: int | None) -> str | None:
    if mk.device_class not in stacks:
        return f"no live worker of class {mk.device_class}"
    if any(h == mk.key_hash and sel and matches(sel, mk.device_class) for h, sel in active):
        return "a job for it is already queued or running"
    if any((mk.kernel, mk.kernel_version, mk.key_hash, mk.device_class, fp) in current
           for fp in stacks[mk.device_class]):
        return "tuned under a stack live workers run (the runtime's stack differs: see `tuner retune --stale-only`)"
    try:
        spec = registry.get(mk.kernel)
    except SpecError:
        return f"kernel {mk.kernel} is not registered here"
    if spec.version != mk.kernel_version:
        return f"served by kernel version {mk.kernel_version}, and version {spec.version} is registered here"
    # what `tuner submit` would refuse is never queued: no worker of the class could hold a trial
    return unfit(spec, [TuningKey.from_json(mk.key)], mk.device_class, f"device class {mk.device_class}",
                 host_bytes=host_bytes)


def _signed(s, mk: MissedKey) -> tuple[MissedKey, str | None]:
    """A drop-in kernel's key with the newest launch signature recorded for it (store.launch_signatures:
    the key's rows are summed over stacks, and the most frequent may carry none), or why it is
    not queued. Any other kernel's key as it is. The kernel is registered (_why_not checked it)."""
    if not registry.get(mk.kernel).needs_signature:
        return mk, None
    sig = store.launch_signatures(s, kernel=mk.kernel, kernel_version=mk.kernel_version,
                                  key_hashes=[mk.key_hash]).get(mk.key_hash)
    if sig is None:
        return mk, UNSIGNED
    return replace(mk, key={**mk.key, "signature": sig}), None


def enqueue_misses(db_url: str, send: Callable[[BatchMessage], None] | None, *, holder: str, dead_after_s: float,
                   trials: int, top: int, min_count: int = MIN_COUNT, max_jobs: int | None = None,
                   device_class: Callable[[str], bool] | None = None, kernel: str | None = None,
                   dry_run: bool = False, parallel: int, batch_trials: int) -> dict:
    """Queue a tuning job for each of the `top` most frequent missed keys of every class with live
    workers (at most `max_jobs` in all, the most frequent first); returns what was (or would be)
    queued and what was skipped, and why."""
    run_id = uuid.uuid4().hex[:12]
    if not dry_run:
        with session_scope(db_url) as s:
            if not store.acquire_lock(s, LOCK, holder, ttl_s=300):
                return {"run": run_id, "locked_by_other": True, "dry_run": dry_run, "jobs": [], "skipped": []}
    try:
        messages, planned, skipped = [], [], []
        with session_scope(db_url) as s:
            stacks = live_stacks(s, dead_after_s)
            active = _active(s)
            current = {(b.kernel, b.kernel_version, b.key_hash, slug, fp.hash)
                       for b, slug, fp in store.best_configs(s, kernel=kernel)}
            per_class: dict[str, int] = {}
            chosen, host_bytes = [], host_memory()
            for mk in missed_keys(s, kernel=kernel, device_class=device_class, min_count=min_count):
                why = _why_not(mk, stacks, active, current, host_bytes)
                if why is None:
                    mk, why = _signed(s, mk)
                if why is None and per_class.get(mk.device_class, 0) >= top:
                    why = f"beyond the top {top} of its class"
                if why is None and max_jobs is not None and len(chosen) >= max_jobs:
                    why = f"beyond the cap of {max_jobs} job(s)"
                if why is not None:
                    skipped.append({**mk.to_json(), "reason": why})
                    continue
                per_class[mk.device_class] = per_class.get(mk.device_class, 0) + 1
                chosen.append(mk)
            for mk in chosen:
                plan = mk.to_json()
                planned.append(plan)
                if dry_run:
                    continue
                request = JobRequest(mk.kernel, (mk.key,), trials, seed=0, batch_trials=batch_trials,
                                     misses=MissOrigin(mk.count, mk.levels, run_id))
                job_id, (key_id,) = lifecycle.create_job(
                    s, kind="miss", origin=lifecycle.QUEUED_ORIGIN, kernel=mk.kernel, kernel_version=mk.kernel_version,
                    keys=[mk.key], key_hashes=[mk.key_hash], sampler=request.sampler, seed=request.seed,
                    budget_trials=trials, request=request.to_json(), device_selector=mk.device_class)
                msg = batch_message(s.get(models.Job, job_id), s.get(models.JobKey, key_id))
                messages += [msg] * min(parallel, -(-trials // msg.batch_trials))
                plan["job"] = job_id
        for msg in messages:  # after commit, so a worker never sees a message before its rows
            send(msg)
        return {"run": run_id, "locked_by_other": False, "dry_run": dry_run, "jobs": planned, "skipped": skipped}
    finally:
        if not dry_run:
            with session_scope(db_url) as s:
                store.release_lock(s, LOCK, holder)
