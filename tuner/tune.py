"""`tuner tune`: the local path, in-process, no broker: job -> key studies -> trials -> best."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from db import lifecycle, store
from db.session import session_scope
from devices.classes import DeviceClass, check_device_name
from devices.fingerprint import StackFingerprint
from devices.fit import host_memory
from devices.probe import live_identity
from search_spaces import registry
from keys import Config, TuningKey
from tuner.db_open import open_for_write, open_studies
from tuner.request import TuneRequest, refuse_unfit
from tuner.settings import Settings
from workers.job_request import Runner


@dataclass(frozen=True)
class KeyOutcome:
    key: TuningKey
    trials: int
    config: Config | None
    median_ms: float | None
    default_ms: float | None
    speedup: float | None
    search_s: float  # the trials, from the first proposal to the last result stored
    finalize_s: float  # the re-measurement of the top configurations
    kept: bool = False  # the key's current best stayed: nothing measured beat it beyond noise


@dataclass(frozen=True)
class TuneOutcome:
    job_id: str
    device_class: str
    fingerprint: str
    interpreter: bool
    keys: tuple[KeyOutcome, ...]
    startup_s: float  # the harness's processes (importing torch and triton, opening the device)


@dataclass(frozen=True)
class LocalPlan:
    """A request checked against the live device and an open database; nothing written yet."""
    req: TuneRequest
    url: str
    device: str
    dc: DeviceClass
    fp: StackFingerprint
    trial_timeout_s: float
    heartbeat_s: float
    grace_s: float


def prepare(req: TuneRequest, settings: Settings, device: str | None) -> LocalPlan:
    dc, fp, device_str = live_identity(device or settings.device, settings.fingerprint_override)
    check_device_name(dc.device_name)  # a local tune registers it as a worker does
    refuse_unfit(req, dc.slug, f"device {device_str} ({dc.slug})", host_memory=host_memory())
    url = open_for_write(settings)
    open_studies(settings, url)
    return LocalPlan(req, url, device_str, dc, fp, settings.trial_timeout_s, settings.heartbeat_s,
                     settings.worker_dead_after_s)


def tune_local(plan: LocalPlan, progress=None, finalizing=None) -> TuneOutcome:
    """Run the plan's searches here. `progress(n)` is called once per counted trial, and
    `finalizing(key)` when a key's leaders start their final re-measurement (tens of seconds on
    the interpreter, with no trial to count)."""
    req, url, dc, fp = plan.req, plan.url, plan.dc, plan.fp
    from harness.harness import Harness
    from search.finalize import finalize
    from search.loop import SearchContext, run_batch, seed_configs, study_name

    spec = registry.get(req.kernel)
    target = dc.target
    names = [study_name(key, dc.slug, fp.hash, req.measurement) for key in req.keys]
    with session_scope(url) as s:
        dc_id, fp_id = store.store_identity(s, dc.to_json(), {**fp.to_json(), "hash": fp.hash})
        job_id, key_ids = lifecycle.create_job(
            s, kind="tune", origin=lifecycle.LOCAL_ORIGIN, kernel=req.kernel, kernel_version=spec.version,
            keys=req.key_rows(), key_hashes=[k.stable_hash for k in req.keys],
            sampler=req.sampler, seed=req.seed, budget_trials=req.trials,
            # who runs it: the janitor fails the job when this process is gone (workers/janitor.py)
            request=req.job_request(runner=Runner(socket.gethostname(), os.getpid())).to_json(),
            device_class_id=dc_id, state=lifecycle.RUNNING, study_names=names)

    outcomes = []
    state, error = lifecycle.DONE, None
    try:
        with Harness() as harness:
            t = time.perf_counter()
            harness.start(plan.device)
            startup_s = time.perf_counter() - t
            for key, row, key_id, name in zip(req.keys, req.key_rows(), key_ids, names):
                ctx = SearchContext(db_url=url, job_id=job_id, job_key_id=key_id, key=key,
                                    device=plan.device, target=target, device_class_id=dc_id,
                                    fingerprint_id=fp_id, study_name=name,
                                    sampler=req.sampler, seed=req.seed, budget_trials=req.trials,
                                    trial_timeout_s=plan.trial_timeout_s, measurement=req.measurement,
                                    heartbeat_s=plan.heartbeat_s, grace_s=plan.grace_s,
                                    signature=row.get("signature"))
                t = time.perf_counter()
                ran = run_batch(ctx, harness, req.trials, first=seed_configs(ctx),
                                on_trial=(lambda c, r: progress(1)) if progress else None).ran
                t2 = time.perf_counter()
                if finalizing:
                    finalizing(key)
                done = finalize(ctx, harness, dc.slug)
                t3 = time.perf_counter()
                with session_scope(url) as s:
                    lifecycle.end_local_key(s, key_id, bool(done), ran)
                outcomes.append(KeyOutcome(key, ran, done.config if done else None,
                                           done.median_ms if done else None,
                                           done.default_ms if done else None,
                                           done.speedup if done else None, t2 - t, t3 - t2,
                                           bool(done and done.kept)))
    except BaseException as exc:
        state, error = ((lifecycle.CANCELLED, "interrupted") if isinstance(exc, KeyboardInterrupt)
                        else (lifecycle.FAILED, repr(exc)))
        raise
    finally:
        with session_scope(url) as s:
            lifecycle.end_local_job(s, job_id, state, error)
    return TuneOutcome(job_id, dc.slug, fp.hash, target.is_interpreter, tuple(outcomes), startup_s)
