"""One key's search: ask Optuna for a configuration, measure it in the harness, tell and store.

Shared by local `tuner tune` and the Celery trial-batch task, so that a trial means the same
thing in both: every measured configuration becomes a `tuning_trials` row; a failed trial
counts toward the budget and is told to Optuna as failed, never as a fast result; a
configuration that the kernel's `check` rejects is stored as `invalid` but costs no budget.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from sqlalchemy import func, select

from db import models, store
from db.session import session_scope
from search_spaces import registry
from search_spaces.base import Config, Target, TuningKey, config_hash
from workers.harness import Harness
from workers.messages import TrialRequest, TrialResult

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SAMPLERS = ("tpe", "random", "grid")
# a run of proposals that are invalid or already measured means the space is (nearly) exhausted
MAX_IDLE_PROPOSALS = 200
EARLY_STOP_FACTOR = 3.0


@dataclass(frozen=True)
class SearchContext:
    db_url: str
    job_id: str
    job_key_id: int
    key: TuningKey
    device: str  # "cpu" or "cuda:N"
    target: Target
    device_class_id: int
    fingerprint_id: int
    study_name: str
    sampler: str = "tpe"
    seed: int | None = None
    budget_trials: int = 20
    trial_timeout_s: float = 120.0
    worker_id: int | None = None


def study_name(key: TuningKey, device_class_slug: str, fingerprint_hash: str) -> str:
    """One study per (kernel version, key, device class, stack): re-running a job continues it."""
    return f"{key.kernel}:{key.version}:{key.stable_hash}:{device_class_slug}:{fingerprint_hash}"


def storage(db_url: str) -> optuna.storages.RDBStorage:
    kwargs = {"connect_args": {"timeout": 30}} if db_url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(db_url, engine_kwargs=kwargs)


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate TPE models the interaction of tile sizes; constant_liar keeps
        # cooperating workers from proposing the same point while a trial is running
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=8)
    # grid is driven by enqueue_trial over the valid configurations (see _grid_next)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(ctx: SearchContext, seeds: list[Config] | None = None) -> optuna.Study:
    """Create or load the key's study; a new study gets the seed configurations enqueued first."""
    st = storage(ctx.db_url)
    sampler = make_sampler(ctx.sampler, ctx.seed)
    try:
        study = optuna.load_study(study_name=ctx.study_name, storage=st, sampler=sampler)
        return study
    except KeyError:
        pass
    try:
        study = optuna.create_study(study_name=ctx.study_name, storage=st, sampler=sampler,
                                    direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
        return optuna.load_study(study_name=ctx.study_name, storage=st, sampler=sampler)
    for config in seeds or []:
        study.enqueue_trial(config, skip_if_exists=True)
    return study


def suggest(trial: optuna.Trial, space: dict[str, tuple]) -> Config:
    return {name: trial.suggest_categorical(name, list(values)) for name, values in space.items()}


def counted_trials(db_url: str, job_key_id: int) -> int:
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(models.TuningTrial).where(
            models.TuningTrial.job_key_id == job_key_id, models.TuningTrial.status != "invalid")) or 0


def measured(db_url: str, study: str) -> dict[str, tuple[str, float | None]]:
    """config_hash -> (status, median_ms) of every trial already stored for this study."""
    with session_scope(db_url) as s:
        rows = s.execute(select(models.TuningTrial.config_hash, models.TuningTrial.status,
                                models.TuningTrial.median_ms)
                         .where(models.TuningTrial.study_name == study)).all()
    out: dict[str, tuple[str, float | None]] = {}
    for h, status, median in rows:
        if h not in out or status == "ok":
            out[h] = (status, median)
    return out


def request_for(ctx: SearchContext, config: Config, early_stop_ms: float | None, *,
                reps: int = 10, min_time_s: float = 0.2) -> TrialRequest:
    interpreter = ctx.target.is_interpreter
    return TrialRequest(
        kernel=ctx.key.kernel, key=ctx.key.to_json(), config=config, device=ctx.device,
        arch=ctx.target.arch, seed=ctx.seed or 0,
        warmup=0 if interpreter else 3,  # the correctness launch already warms the interpreter
        reps=3 if interpreter else reps, min_time_s=0.0 if interpreter else min_time_s,
        early_stop_ms=early_stop_ms, timeout_s=ctx.trial_timeout_s)


def store_trial(ctx: SearchContext, trial_number: int | None, config: Config, result: TrialResult) -> None:
    with session_scope(ctx.db_url) as s:
        store.record_trial(
            s, job_id=ctx.job_id, job_key_id=ctx.job_key_id, kernel=ctx.key.kernel,
            key_hash=ctx.key.stable_hash, device_class_id=ctx.device_class_id,
            fingerprint_id=ctx.fingerprint_id, worker_id=ctx.worker_id, study_name=ctx.study_name,
            optuna_number=trial_number, config=config, config_hash=config_hash(config),
            status=result.status, message=result.message[:2000] if result.message else None,
            median_ms=result.median_ms, p20_ms=result.p20_ms, p80_ms=result.p80_ms, cv=result.cv,
            reps=result.reps, compile_s=result.compile_s)


def _grid_next(ctx: SearchContext, seen: dict[str, tuple[str, float | None]]) -> Config | None:
    spec = registry.get(ctx.key.kernel)
    configs = spec.valid_configs(ctx.key, ctx.target)
    random.Random(ctx.seed or 0).shuffle(configs)  # a seeded order, so a budget < grid is unbiased
    for config in configs:
        if config_hash(config) not in seen:
            return config
    return None


def run_batch(ctx: SearchContext, harness: Harness, max_trials: int,
              on_trial: Callable[[Config, TrialResult], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> int:
    """Run up to max_trials counted trials of the key's study, within the key's budget.

    Returns how many counted trials this call ran. The budget is re-read from the database
    before every trial, so cooperating workers overshoot it by at most one trial each.
    """
    spec = registry.get(ctx.key.kernel)
    space = spec.space(ctx.target)
    study = open_study(ctx)
    seen = measured(ctx.db_url, ctx.study_name)
    ran = idle = 0
    while ran < max_trials and idle < MAX_IDLE_PROPOSALS:
        if should_stop and should_stop():
            break
        if counted_trials(ctx.db_url, ctx.job_key_id) >= ctx.budget_trials:
            break
        if ctx.sampler == "grid":
            nxt = _grid_next(ctx, seen)
            if nxt is None:
                break
            study.enqueue_trial(nxt)
        trial = study.ask()
        config = suggest(trial, space)
        h = config_hash(config)
        if h in seen:  # measured before (by us or another worker): tell what we know, spend nothing
            status, median = seen[h]
            study.tell(trial, median if status == "ok" else None,
                       state=None if status == "ok" else optuna.trial.TrialState.FAIL)
            idle += 1
            continue
        reason = spec.check(config, ctx.key, ctx.target)
        if reason is not None:
            result = TrialResult.failed("invalid", reason, config)
        else:
            best = min((m for s, m in seen.values() if s == "ok" and m is not None), default=None)
            result = harness.run(request_for(ctx, config, best * EARLY_STOP_FACTOR if best else None))
        store_trial(ctx, trial.number, config, result)
        seen[h] = (result.status, result.median_ms)
        if result.status == "ok":
            study.tell(trial, result.median_ms)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if result.status == "invalid":
            idle += 1
            continue
        idle = 0
        ran += 1
        if on_trial:
            on_trial(config, result)
    return ran
