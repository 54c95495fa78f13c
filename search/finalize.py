"""The end of a key's study: re-measure the leaders against the default and store the best once.

A single lucky repetition must not become the stored best, so the top-k distinct
configurations are re-benchmarked together with the kernel's default, interleaved in
rounds (a drift of the machine hits them all alike; each round starts one place later, so
no configuration always runs first), and the median of rounds decides. A round whose
measurement varies more than FINAL_MAX_CV is measured again with more repetitions.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from sqlalchemy import select

from db import models, store
from db.session import session_scope
from harness.harness import Harness
from search.loop import SearchContext, request_for
from search_spaces import registry
from search_spaces.base import Config, config_hash

TOP_K = 3
ROUNDS = 3
FINAL_MAX_CV = 0.1


@dataclass(frozen=True)
class Finalized:
    config: Config
    median_ms: float
    default_ms: float | None
    speedup: float | None
    cv: float | None
    trials: int
    best_id: int


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


def remeasure(ctx: SearchContext, harness: Harness, configs: list[Config]) -> dict[str, tuple[float, float | None]]:
    """config_hash -> (median of round medians, cv of the last round) for the configs that stay ok."""
    samples: dict[str, list[float]] = {config_hash(c): [] for c in configs}
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
    return {h: (statistics.median(v), cvs.get(h)) for h, v in samples.items() if v}


def finalize(ctx: SearchContext, harness: Harness, device_class_slug: str) -> Finalized | None:
    """Store the key's best configuration (superseding the previous one) in one transaction."""
    spec = registry.get(ctx.key.kernel)
    top, counted = leaders(ctx.db_url, ctx.study_name)
    if not top:
        return None
    default = spec.default(ctx.key, ctx.target)
    candidates = top + ([default] if config_hash(default) not in {config_hash(c) for c in top} else [])
    timed = remeasure(ctx, harness, candidates)
    ranked = sorted(((timed[config_hash(c)][0], c) for c in top if config_hash(c) in timed),
                    key=lambda t: t[0])
    if not ranked:
        return None
    best_ms, best = ranked[0]
    default_ms = timed.get(config_hash(default), (None, None))[0]
    if default_ms is not None and default_ms < best_ms:
        # the default re-measured faster than every searched leader: it is the honest best
        best_ms, best = default_ms, default
    speedup = default_ms / best_ms if default_ms else None
    with session_scope(ctx.db_url) as s:
        row = store.write_best(
            s, kernel=ctx.key.kernel, kernel_version=ctx.key.version, key_hash=ctx.key.stable_hash,
            key=ctx.key.to_json(), dtype=ctx.key.dtype, device_class_id=ctx.device_class_id,
            fingerprint_id=ctx.fingerprint_id, config=best, config_hash=config_hash(best),
            median_ms=best_ms, default_ms=default_ms, speedup=speedup,
            cv=timed[config_hash(best)][1], trials=counted, job_id=ctx.job_id)
        s.flush()
        best_id = row.id
    return Finalized(best, best_ms, default_ms, speedup, timed[config_hash(best)][1], counted, best_id)
