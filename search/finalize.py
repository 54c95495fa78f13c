"""The end of a key's study: re-measure the leaders against the default and store the best once.

A single lucky repetition must not become the stored best, so the top-k distinct
configurations are re-benchmarked together with the kernel's default and the key's current
best, interleaved in rounds (a drift of the machine hits them all alike; each round starts one
place later, so no configuration always runs first), and the median of rounds decides. A round
whose measurement varies more than FINAL_MAX_CV is measured again with more repetitions. The
current best is replaced only by one faster beyond noise (`faster`), so a rerun, or a second
finalizer of the key, never leaves a worse one.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import models, store
from db.session import session_scope
from harness.harness import Harness
from search.loop import SearchContext, request_for
from search_spaces import registry
from keys import Config, config_hash

TOP_K = 3
ROUNDS = 3
FINAL_MAX_CV = 0.1
NOISE = 0.02  # a new best must beat the current one by this much (and in every round) to replace it
MAX_REMEASURES = 3  # re-measurements when a concurrent finalizer keeps replacing the current best
# harness runs of one finalization at most: leaders, default and current best, each round, each
# possibly measured twice (max_cv); workers/service.py bounds a batch's duration with it
MAX_RUNS = (TOP_K + 2) * ROUNDS * 2


@dataclass(frozen=True)
class Finalized:
    config: Config
    median_ms: float
    default_ms: float | None
    speedup: float | None
    cv: float | None
    trials: int
    best_id: int
    kept: bool = False  # the key's current best stayed: nothing measured here beat it beyond noise


class Superseded(Exception):
    """The caller's guard refused the write: another finalizer has taken the key over."""


def leaders(db_url: str, study: str, k: int = TOP_K) -> tuple[list[Config], int]:
    """The k fastest distinct configurations measured ok in the study, and its trial count."""
    with session_scope(db_url) as s:
        rows = s.execute(select(models.TuningTrial.config, models.TuningTrial.config_hash,
                                models.TuningTrial.median_ms, models.TuningTrial.status)
                         .where(models.TuningTrial.study_name == study)).all()
    counted = sum(1 for r in rows if r.status != "invalid")
    best: dict[str, tuple[float, Config]] = {}
    for config, h, median, status in rows:
        if status == "ok" and median is not None and (h not in best or median < best[h][0]):
            best[h] = (median, config)
    return [c for _, c in sorted(best.values(), key=lambda t: t[0])[:k]], counted


def remeasure(ctx: SearchContext, harness: Harness, configs: list[Config]) -> dict[str, tuple[list[float], float | None]]:
    """config_hash -> (median of each round, cv of the last round) for the configs that stay ok."""
    samples: dict[str, list[float] | None] = {config_hash(c): [] for c in configs}
    final_cv = min(FINAL_MAX_CV, ctx.measurement.max_cv or FINAL_MAX_CV)  # the job's, when stricter
    cvs: dict[str, float | None] = {}
    for r in range(ROUNDS):
        shift = r % len(configs) if configs else 0
        for config in configs[shift:] + configs[:shift]:
            h = config_hash(config)
            if samples[h] is None:
                continue
            result = harness.run(replace(request_for(ctx, config, None), max_cv=final_cv))
            if result.status != "ok" or result.median_ms is None:
                samples[h] = None  # a leader that fails now is never stored as best
                continue
            samples[h].append(result.median_ms)
            cvs[h] = result.cv
    return {h: (v, cvs.get(h)) for h, v in samples.items() if v}


def faster(new: list[float], old: list[float]) -> bool:
    """`new` beats `old` beyond noise: faster in every round the two were measured in together, and
    by more than NOISE in the median. A rerun must never leave a worse current best: a leader that
    is as fast within noise (or is the current best itself) does not replace it."""
    pairs = list(zip(new, old))
    return bool(pairs) and all(a < b for a, b in pairs) and \
        statistics.median(new) < statistics.median(old) * (1 - NOISE)


def current_best(ctx: SearchContext):
    """The key's current best row on this class and stack, or None."""
    with session_scope(ctx.db_url) as s:
        rows = store.best_configs(s, kernel=ctx.key.kernel, kernel_version=ctx.key.version,
                                  key_hash=ctx.key.stable_hash, device_class_id=ctx.device_class_id)
    return next((b for b, _, fp in rows if fp.id == ctx.fingerprint_id), None)


def finalize(ctx: SearchContext, harness: Harness, device_class_slug: str,
             guard: Callable[[Session], bool] | None = None) -> Finalized | None:
    """Re-measure the study's leaders with the kernel's default and the key's current best, in the
    same interleaved rounds, and store the winner when it beats the current best beyond noise (in
    one transaction, superseding it); otherwise the current best stays. None when no leader runs
    correctly. `guard(session)` runs in the transaction that ends the key (with or without a new
    row); Superseded is raised when it returns False, and nothing is written."""
    spec = registry.get(ctx.key.kernel)
    top, counted = leaders(ctx.db_url, ctx.study_name)
    if not top:
        return None
    default = spec.default(ctx.key, ctx.target)
    for _ in range(MAX_REMEASURES):
        current = current_best(ctx)
        extra = [default] + ([current.config] if current is not None else [])
        candidates = list({config_hash(c): c for c in top + extra}.values())
        timed = remeasure(ctx, harness, candidates)
        med = {h: statistics.median(rounds) for h, (rounds, _) in timed.items()}
        ranked = sorted(((med[config_hash(c)], c) for c in top if config_hash(c) in timed), key=lambda t: t[0])
        if not ranked:
            return None
        best_ms, best = ranked[0]
        default_ms = med.get(config_hash(default))
        if default_ms is not None and default_ms < best_ms:
            # the default re-measured faster than every searched leader: it is the honest best
            best_ms, best = default_ms, default
        kept = current is not None and (config_hash(best) == current.config_hash or (
            current.config_hash in timed and not faster(timed[config_hash(best)][0], timed[current.config_hash][0])))
        if kept:
            best_ms = med.get(current.config_hash, current.median_ms)
            with session_scope(ctx.db_url) as s:
                if guard is not None and not guard(s):
                    raise Superseded()
            return Finalized(current.config, best_ms, default_ms, default_ms / best_ms if default_ms else None,
                             timed.get(current.config_hash, ([], current.cv))[1], counted, current.id, kept=True)
        speedup = default_ms / best_ms if default_ms else None
        with session_scope(ctx.db_url) as s:
            row = store.write_best(
                s, kernel=ctx.key.kernel, kernel_version=ctx.key.version, key_hash=ctx.key.stable_hash,
                key=ctx.key.to_json(), dtype=ctx.key.dtype, device_class_id=ctx.device_class_id,
                fingerprint_id=ctx.fingerprint_id, config=best, config_hash=config_hash(best),
                median_ms=best_ms, default_ms=default_ms, speedup=speedup,
                cv=timed[config_hash(best)][1], trials=counted, job_id=ctx.job_id,
                replaces=current.id if current is not None else None)
            if row is None:
                continue  # another finalizer of the key wrote a best meanwhile: measure against it
            if guard is not None and not guard(s):
                raise Superseded()
            s.flush()
            best_id = row.id
        return Finalized(best, best_ms, default_ms, speedup, timed[config_hash(best)][1], counted, best_id)
    raise RuntimeError(f"the current best of {ctx.key.label()} changed {MAX_REMEASURES} times while it was "
                       "re-measured: another finalizer keeps writing it")
