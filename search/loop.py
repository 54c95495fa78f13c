"""One key's search: ask Optuna for a configuration, claim it, measure it in the harness, store
and tell.

Shared by local `tuner tune` and the Celery trial-batch task, so that a trial means the same
thing in both: every measured configuration becomes a `tuning_trials` row; a failed trial
counts toward the budget and is told to Optuna as failed, never as a fast result; a
configuration that the kernel's `check` rejects is stored as `invalid` but costs no budget.
A configuration is claimed before it is measured (`trial_claims`), so cooperating workers see
each other's trials in flight and never measure one twice; the stored row fills the claim, and
a trial that nobody will tell is ended by `search.studies.recover`.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable

import optuna
from sqlalchemy import func, select

from db import models, store
from db.session import session_scope
from devices.classes import matches
from harness.harness import Harness
from harness.protocol import Measurement, TrialRequest, TrialResult
from search import strategies, studies
from search.propose import propose, tell
from search.strategies.base import Seen, Strategy
from search_spaces import registry
from keys import Config, TuningKey, config_hash
from devices.targets import Target
from search_spaces.base import KernelSpec

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

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
    budget_trials: int
    # the settings' values (tuner/settings.py), given by the worker or `tuner tune`, never defaulted here
    trial_timeout_s: float
    heartbeat_s: float  # how often Optuna's heartbeat of a trial in flight is recorded
    grace_s: float  # a trial whose heartbeat is older is dead: failed, and enqueued again
    sampler: str = strategies.DEFAULT
    seed: int | None = None
    worker_id: int | None = None
    measurement: Measurement = Measurement()
    signature: dict | None = None  # a drop-in kernel's launch signature (the job key's "signature")


def study_name(key: TuningKey, device_class_slug: str, fingerprint_hash: str,
               measurement: Measurement = Measurement()) -> str:
    """One study per (kernel version, key, device class, stack, way of timing): re-running a job
    continues it."""
    return f"{key.kernel}:{key.version}:{key.stable_hash}:{device_class_slug}:{fingerprint_hash}{measurement.tag}"


def open_study(ctx: SearchContext) -> optuna.Study:
    """Load the key's study, or create it."""
    st = studies.storage(ctx.db_url, ctx.heartbeat_s, ctx.grace_s)
    sampler = strategies.make(ctx.sampler, ctx.seed).sampler()
    try:
        return optuna.load_study(study_name=ctx.study_name, storage=st, sampler=sampler)
    except KeyError:
        pass
    try:
        return optuna.create_study(study_name=ctx.study_name, storage=st, sampler=sampler, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
        return optuna.load_study(study_name=ctx.study_name, storage=st, sampler=sampler)


def seed_configs(ctx: SearchContext, first: list[Config] = ()) -> list[Config]:
    """What a job measures first on its key, before the strategy proposes (those the study has
    measured already are skipped): `first` (a retune's old best and top-k) whatever the strategy,
    then the strategy's own seeds (for auto: the default, then the warm start: imported
    configurations of this key, the nearest stored shapes' bests, imported ones of the nearest
    shapes; then the kernel's known-good configurations). Valid ones only, each once. A job's, not
    the study's: a job that continues a study another job created still measures its own seeds first."""
    spec = registry.get(ctx.key.kernel)
    strategy = strategies.make(ctx.sampler, ctx.seed)
    exact, near_imported = imported_seeds(ctx.db_url, ctx.key, ctx.device_class_id)
    warm = [*exact, *nearest_bests(ctx.db_url, ctx.key, ctx.device_class_id), *near_imported]
    return valid_unique(spec, ctx.key, ctx.target, [*first, *strategy.seeds(spec, ctx.key, ctx.target, warm)])


def _log2_distance(want: dict[str, int], dims: dict) -> float:
    """How far stored dims are from the key's, in doublings summed over the key's dims (a dim the
    stored row does not name counts as 1)."""
    return sum(abs(math.log2(want[n]) - math.log2(max(1, int(dims.get(n, 1))))) for n in want)


def imported_seeds(db_url: str, key: TuningKey, device_class_id: int, k: int = 3) -> tuple[list[Config], list[Config]]:
    """(configurations imported for this key, those of the k nearest other imported shapes) on the
    class (or its family), same kernel and dtype. An imported row names only some of the key's dims
    (vLLM's files: E, N, M): it matches when those are equal, and is near by log2 distance over them."""
    want = key.dim_map
    with session_scope(db_url) as s:
        slug = s.get(models.DeviceClass, device_class_id).slug
        rows = [(r.dims, r.config) for r in store.imported_configs(s, kernel=key.kernel, dtype=key.dtype)
                if matches(r.device_selector, slug) and set(r.dims) <= set(want)]
    exact = [c for dims, c in rows if all(want[n] == v for n, v in dims.items())]
    others = sorted(((d, c) for d, c in rows if any(want[n] != v for n, v in d.items())),
                    key=lambda r: _log2_distance({n: want[n] for n in r[0]}, r[0]))
    return exact, [c for _, c in others[:k]]


def valid_unique(spec: KernelSpec, key: TuningKey, target: Target, configs: list[Config]) -> list[Config]:
    out, hashes = [], set()
    for c in configs:
        if config_hash(c) not in hashes and spec.check(c, key, target) is None:
            hashes.add(config_hash(c))
            out.append(c)
    return out


def nearest_bests(db_url: str, key: TuningKey, device_class_id: int, k: int = 3) -> list[Config]:
    """The current best configurations of the k stored shapes nearest to key (log2 distance) on
    the same device class, kernel version and dtype: the warm start of a new shape."""
    with session_scope(db_url) as s:
        rows = [(b.key, b.config) for b, _, _ in store.best_configs(
            s, kernel=key.kernel, kernel_version=key.version, dtype=key.dtype, device_class_id=device_class_id)
            if b.key_hash != key.stable_hash]
    ranked = sorted(reversed(rows), key=lambda r: _log2_distance(key.dim_map, r[0]["dims"]))  # oldest first among equals
    return [config for _, config in ranked[:k]]


def counted_trials(db_url: str, job_key_id: int) -> int:
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(models.TuningTrial).where(
            models.TuningTrial.job_key_id == job_key_id, models.TuningTrial.status != "invalid")) or 0


def measured(db_url: str, study: str) -> Seen:
    """config_hash -> (status, median_ms) of every trial already stored for this study, and
    ("pending", None) for the configurations claimed by trials in flight (any worker's)."""
    with session_scope(db_url) as s:
        rows = s.execute(select(models.TuningTrial.config_hash, models.TuningTrial.status,
                                models.TuningTrial.median_ms)
                         .where(models.TuningTrial.study_name == study)).all()
        claimed = s.scalars(select(models.TrialClaim.config_hash).where(
            models.TrialClaim.study_name == study, models.TrialClaim.trial_row_id.is_(None))).all()
    out: Seen = {h: ("pending", None) for h in claimed}
    for h, status, median in rows:
        if h not in out or out[h][0] == "pending" or status == "ok":
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
        early_stop_ms=early_stop_ms, timeout_s=ctx.trial_timeout_s, signature=ctx.signature,
        **ctx.measurement.to_json())


def store_trial(ctx: SearchContext, trial_number: int | None, config: Config, result: TrialResult,
                claimed: bool = True) -> bool:
    """Store a trial's row. A measured (claimed) one is stored only while its claim is still its own
    (False when it was failed as dead meanwhile, and its result is dropped); a proposal that the
    kernel's check refused was never claimed."""
    fields = dict(
        job_id=ctx.job_id, job_key_id=ctx.job_key_id, kernel=ctx.key.kernel,
        key_hash=ctx.key.stable_hash, device_class_id=ctx.device_class_id,
        fingerprint_id=ctx.fingerprint_id, worker_id=ctx.worker_id, study_name=ctx.study_name,
        optuna_number=trial_number, config=config, config_hash=config_hash(config),
        status=result.status, message=result.message[:2000] if result.message else None,
        median_ms=result.median_ms, p20_ms=result.p20_ms, p80_ms=result.p80_ms, cv=result.cv,
        reps=result.reps, compile_s=result.compile_s)
    with session_scope(ctx.db_url) as s:
        if not claimed:
            store.record_trial(s, **fields)
            return True
        return store.record_claimed_trial(s, **fields) is not None


def claim(ctx: SearchContext, trial_number: int, config: Config) -> bool:
    with session_scope(ctx.db_url) as s:
        return store.claim_config(s, study_name=ctx.study_name, config_hash=config_hash(config),
                                  trial_number=trial_number, job_key_id=ctx.job_key_id, worker_id=ctx.worker_id)


class Proposals:
    """A key's study seen from whoever measures its proposals (the live loop here, the replay in
    search/replay.py): what has been measured or is in flight, the next proposal, and telling
    Optuna each result, so both keep the same books."""

    def __init__(self, study: optuna.Study, strategy: Strategy, spec: KernelSpec, key: TuningKey, target: Target,
                 seen: Seen, on_invalid: Callable[[int, Config, str], None] | None = None,
                 claim: Callable[[optuna.Trial, Config], bool] | None = None, first: list[Config] = ()):
        """claim: takes a proposal for this measurer (False: another has it); first: measured
        before anything the strategy proposes, unless already measured (a retune's old best and
        top-k, whoever created the study)."""
        self.study, self.strategy, self.spec, self.key, self.target = study, strategy, spec, key, target
        self.seen, self.on_invalid, self.claim, self.first = seen, on_invalid, claim, list(first)
        self.in_flight = 0

    def next(self, counted: int) -> tuple[optuna.Trial, Config] | None:
        """The next configuration to measure, marked in flight; None when the space has nothing
        left. `counted`: trials already counted against the budget (those in flight are added)."""
        preferred = next((c for c in self.first if config_hash(c) not in self.seen), None)
        proposal = propose(self.study, self.strategy, self.spec, self.key, self.target, self.seen,
                           counted + self.in_flight, self.on_invalid, preferred=preferred, claim=self.claim)
        if proposal is not None:
            self.seen[config_hash(proposal[1])] = ("pending", None)  # never proposed twice while in flight
            self.in_flight += 1
        return proposal

    def best(self) -> float | None:
        return min((m for s, m in self.seen.values() if s == "ok" and m is not None), default=None)

    def tell(self, trial: optuna.Trial, config: Config, status: str, median_ms: float | None) -> None:
        self.in_flight -= 1
        self.seen[config_hash(config)] = (status, median_ms)
        # a trial failed as dead while its worker was stopped stays failed (`tell` skips it)
        tell(self.study, trial, median_ms if status == "ok" else None)


@dataclass
class Batch:
    """What a `run_batch` call did: counted trials stored, and whether the space ran out (every valid
    configuration measured or in flight), which ends the key's search whatever its budget."""
    ran: int = 0
    exhausted: bool = False


def run_batch(ctx: SearchContext, harness: Harness, max_trials: int,
              on_trial: Callable[[Config, TrialResult], None] | None = None,
              should_stop: Callable[[], bool] | None = None, first: list[Config] = ()) -> Batch:
    """Run up to max_trials counted trials of the key's study, within the key's budget.

    As many trials are kept in flight as the
    harness compiles ahead (one on the interpreter), and a new one is asked for each time one
    is told, so that on a GPU the compile pool keeps building while the benchmark process
    measures; constant-liar TPE keeps the trials in flight apart. The budget is re-read from
    the database before every proposal, so cooperating workers overshoot it by at most the
    trials each has in flight. `first`: measured first (`seed_configs`), see `Proposals`.
    """
    spec = registry.get(ctx.key.kernel)
    study = open_study(ctx)
    studies.recover_now(study, ctx.db_url, ctx.grace_s)  # a dead worker's trials: told, or failed and retried

    def invalid(number: int, config: Config, reason: str) -> None:
        store_trial(ctx, number, config, TrialResult.failed("invalid", reason, config), claimed=False)

    with studies.Heartbeats(studies.storage(ctx.db_url, ctx.heartbeat_s, ctx.grace_s)) as beats:
        def take_claim(trial: optuna.Trial, config: Config) -> bool:
            beats.add(trial)  # its first heartbeat precedes its claim: a claimed trial is never unwatched
            if claim(ctx, trial.number, config):
                return True
            beats.discard(trial)
            return False

        book = Proposals(study, strategies.make(ctx.sampler, ctx.seed), spec, ctx.key, ctx.target,
                         measured(ctx.db_url, ctx.study_name), invalid, claim=take_claim, first=first)
        batch = Batch()

        def take() -> tuple[tuple[optuna.Trial, Config], TrialRequest] | None:
            if batch.ran + book.in_flight >= max_trials or (should_stop and should_stop()):
                return None
            counted = counted_trials(ctx.db_url, ctx.job_key_id)
            if counted + book.in_flight >= ctx.budget_trials:
                return None
            book.seen.update(measured(ctx.db_url, ctx.study_name))  # the other workers' trials, in flight too
            proposal = book.next(counted)
            if proposal is None:
                batch.exhausted = True  # the space has nothing left worth measuring
                return None
            best = book.best()
            return proposal, request_for(ctx, proposal[1], best * EARLY_STOP_FACTOR if best else None)

        results = harness.stream(take, harness.width(ctx.device), early_stop_factor=EARLY_STOP_FACTOR)
        with contextlib.closing(results):
            for (trial, config), result in results:
                stored = store_trial(ctx, trial.number, config, result)
                book.tell(trial, config, result.status, result.median_ms)
                beats.discard(trial)
                if not stored:
                    log.warning("trial %d of %s was failed as dead while this worker was stopped; its result "
                                "is dropped", trial.number, ctx.study_name)
                    continue
                batch.ran += 1
                if on_trial:
                    on_trial(config, result)
    return batch
