"""`tuner report retune`: what a retune after a driver, runtime, Triton or torch update changed,
per key, with regressions flagged; as a table, JSON or a plot. (`tuner retune` queues the jobs:
tuner/coordinator.py.)"""
from __future__ import annotations

from sqlalchemy import select

from db import models
from db.session import session_scope
from keys import config_hash
from tuner.db_open import open_for_read
from tuner.display import time_axis, timing_label
from tuner.errors import NotFound
from tuner.settings import Settings


def report(settings: Settings, run: str | None) -> dict:
    url = open_for_read(settings)
    threshold = settings.retune_regression_threshold
    with session_scope(url) as s:
        jobs = s.scalars(select(models.Job).where(models.Job.kind == "retune")
                         .order_by(models.Job.created_at.desc())).all()
        if not jobs:
            raise NotFound("no retune has run yet: `tuner retune --stale-only` queues one")
        run = run or jobs[0].request.get("retune_run")
        jobs = [j for j in jobs if j.request.get("retune_run") == run or j.id.startswith(run)]
        if not jobs:
            raise NotFound(f"no retune run {run[:80]!r}; `tuner report retune` shows the latest")
        rows = []
        for job in jobs:
            for key in s.scalars(select(models.JobKey).where(models.JobKey.job_id == job.id)).all():
                warm = job.request.get("warm", {}).get(key.key_hash, {})
                old_hash = config_hash(warm["old_config"]) if warm.get("old_config") else None
                trials = s.execute(select(models.TuningTrial.config_hash, models.TuningTrial.median_ms,
                                          models.TuningTrial.status)
                                   .where(models.TuningTrial.job_key_id == key.id)).all()
                # the old best on the new stack: measured by this retune, or, where another job on
                # the key measured it first in the same study, taken from there (never twice)
                studied = s.execute(select(models.TuningTrial.config_hash, models.TuningTrial.median_ms,
                                           models.TuningTrial.status)
                                    .where(models.TuningTrial.study_name == key.study_name,
                                           models.TuningTrial.config_hash == old_hash)).all() if key.study_name else []
                old_on_new = min((m for h, m, st in [*trials, *studied] if h == old_hash and st == "ok" and m),
                                 default=None)
                new = s.scalar(select(models.BestConfig).where(models.BestConfig.job_id == job.id,
                                                               models.BestConfig.key_hash == key.key_hash))
                old_ms = warm.get("old_ms")
                new_ms = new.median_ms if new else None
                # the stack the retune ran on; before it ends, those it was queued for
                new_fp = (s.get(models.StackFingerprint, new.fingerprint_id).hash if new else
                          ",".join(warm.get("new_fingerprints") or [warm.get("new_fingerprint") or ""]))
                flags = []
                slower = bool(old_ms and new_ms and new_ms > old_ms * (1 + threshold))
                # a regression is the search settling on another configuration that is slower; the
                # same configuration slower is the new stack's doing, said by the flag after
                same = bool(new and old_hash and new.config_hash == old_hash)
                if slower and not same:
                    flags.append(f"regression: new stack {new_ms / old_ms:.2f}x slower than the old")
                if old_ms and old_on_new and old_on_new > old_ms * (1 + threshold):
                    flags.append(f"old config {old_on_new / old_ms:.2f}x slower on the new stack")
                elif slower and same:
                    flags.append(f"old config {new_ms / old_ms:.2f}x slower on the new stack (kept: still the best)")
                rows.append({"job": job.id, "kernel": job.kernel, "device_class": job.device_selector,
                             "key": key.key["dims"], "dtype": key.key["dtype"], "key_hash": key.key_hash,
                             "state": key.state,
                             "old_fingerprint": warm.get("old_fingerprint"), "new_fingerprint": new_fp or None,
                             "old_best_ms_old_stack": old_ms, "old_best_ms_new_stack": old_on_new,
                             "new_best_ms_new_stack": new_ms, "new_config": new.config if new else None,
                             "trials_spent": sum(1 for _, _, st in trials if st != "invalid"),
                             "original_trials": warm.get("old_trials"),
                             "regression": bool(flags and flags[0].startswith("regression")), "flags": flags})
    return {"run": run, "threshold": threshold, "timing": timing_label(r["device_class"] for r in rows), "keys": rows}


def figure(result: dict):
    """Per key: the old best on the old stack and on the new one, and the new best; regressions marked."""
    from tuner.reports import figures

    rows = result["keys"]
    labels = [",".join(f"{k}={v}" for k, v in r["key"].items()) + f"\n{r['dtype']}" for r in rows]
    series = [("old best, old stack", "old_best_ms_old_stack"), ("old best, new stack", "old_best_ms_new_stack"),
              ("new best, new stack", "new_best_ms_new_stack")]
    fig, ax = figures.new(max(6, 1.8 * len(rows)), 4)
    width = 0.27
    factor, unit = time_axis([r[field] for r in rows for _, field in series])
    for i, (name, field) in enumerate(series):
        ax.bar([x + (i - 1) * width for x in range(len(rows))], [(r[field] or 0) * factor for r in rows], width,
               label=name)
    for x, r in enumerate(rows):
        if r["regression"]:
            ax.annotate("regression", (x, (r["new_best_ms_new_stack"] or 0) * factor), ha="center", va="bottom",
                        color="red")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(f"median {unit}")
    ax.set_title(f"retune run {result['run']} ({result['timing']})")
    ax.legend()
    return fig


def plot(result: dict, path: str) -> None:
    from tuner.reports import figures

    figures.save(figure(result), path)
