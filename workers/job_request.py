"""A job's request as its row stores it (`jobs.request`, JSON) and every reader reads it: one frozen
type, built where a job is created (`tuner tune`, `tuner submit` and the API, the retune of stale
keys, the retune of runtime misses) and read as attributes by the workers, the janitor, the
status and the reports. Its per-key parts, a retune's budget and warm start, are keyed by the
key's stable hash.

A row written by an older version, or a test's `{}`, reads with the defaults, the job's columns
filling what they also hold (JobRequest.of)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from harness.protocol import Measurement
from search import strategies


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"a job request's {what} must be an object, not {type(data).__name__}")
    return data


# the stored request's field that names a retune's run: the dashboard groups a run's jobs by it in SQL
RETUNE_RUN = "retune_run"


@dataclass(frozen=True)
class WarmStart:
    """A retune key's start: the configuration that was best under the old stack, and its top-k."""
    old_best_id: int
    old_config: dict[str, Any]
    old_ms: float | None
    old_fingerprint: str
    new_fingerprints: tuple[str, ...]  # the live stacks it is retuned for: only their workers measure it
    old_trials: int
    top: tuple[dict[str, Any], ...] = ()

    def seeds(self) -> list[dict[str, Any]]:
        """The retune's first configurations: the old best, then the old top-k."""
        return [self.old_config, *self.top]

    def to_json(self) -> dict[str, Any]:
        return {"old_best_id": self.old_best_id, "old_config": self.old_config, "old_ms": self.old_ms,
                "old_fingerprint": self.old_fingerprint, "new_fingerprints": list(self.new_fingerprints),
                "old_trials": self.old_trials, "top": list(self.top)}

    @classmethod
    def from_json(cls, data: Any) -> "WarmStart":
        d = _object(data, "warm start")
        # rows of the version before rolling upgrades named one new stack
        new = d.get("new_fingerprints") or ([d["new_fingerprint"]] if d.get("new_fingerprint") else [])
        return cls(d.get("old_best_id"), d.get("old_config"), d.get("old_ms"), d.get("old_fingerprint"),
                   tuple(new), d.get("old_trials"), tuple(d.get("top") or ()))


@dataclass(frozen=True)
class MissOrigin:
    """What a job for a runtime miss was queued for: how often runtimes missed the key, at which levels."""
    count: int
    levels: tuple[str, ...]
    run: str

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "levels": list(self.levels), "run": self.run}


@dataclass(frozen=True)
class Runner:
    """The `tuner tune` process that runs a local job: the janitor fails the job once it is gone."""
    host: str
    pid: int

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid}


@dataclass(frozen=True)
class JobRequest:
    kernel: str
    keys: tuple[dict[str, Any], ...]  # TuningKey JSON each (a drop-in's "signature" beside its fields)
    trials: int  # counted trials per key, unless a key has a budget of its own
    sampler: str = strategies.DEFAULT
    seed: int | None = None
    measurement: Measurement = Measurement()
    # trials per batch message, TUNER_BATCH_TRIALS when a queued job was made (None: a local job); a
    # message asks at most its key's budget (workers/batch.py clamps it there, for every kind of job)
    batch_trials: int | None = None
    budgets: Mapping[str, int] = field(default_factory=dict)  # key hash -> a retune key's budget
    warm: Mapping[str, WarmStart] = field(default_factory=dict)  # key hash -> a retune key's start
    retune_run: str | None = None
    misses: MissOrigin | None = None
    runner: Runner | None = None

    def budget(self, key_hash: str) -> int:
        return self.budgets.get(key_hash, self.trials)

    def warm_seeds(self, key_hash: str) -> list[dict[str, Any]]:
        warm = self.warm.get(key_hash)
        return warm.seeds() if warm else []

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kernel": self.kernel, "keys": list(self.keys), "trials": self.trials,
                               "sampler": self.sampler, "seed": self.seed, "measurement": self.measurement.to_json()}
        optional = {"batch_trials": self.batch_trials, "budgets": dict(self.budgets) or None,
                    "warm": {h: w.to_json() for h, w in self.warm.items()} or None, RETUNE_RUN: self.retune_run,
                    "misses": self.misses.to_json() if self.misses else None,
                    "runner": self.runner.to_json() if self.runner else None}
        return out | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_json(cls, data: Any, **fallback: Any) -> "JobRequest":
        """A stored request; `fallback`: fields its row's columns hold too (kernel, trials, sampler, seed)."""
        d = {**fallback, **{k: v for k, v in _object(data, "row").items() if v is not None}}
        misses, runner = _object(d.get("misses"), "misses"), _object(d.get("runner"), "runner")
        budgets = _object(d.get("budgets"), "budgets")
        return cls(kernel=str(d.get("kernel", "")), keys=tuple(d.get("keys") or ()),
                   trials=int(d.get("trials") or max(budgets.values(), default=0)),
                   sampler=str(d.get("sampler", strategies.DEFAULT)), seed=d.get("seed"),
                   measurement=Measurement.from_json(d.get("measurement")),
                   batch_trials=int(d["batch_trials"]) if "batch_trials" in d else None,
                   budgets={str(h): int(n) for h, n in budgets.items()},
                   warm={str(h): WarmStart.from_json(w) for h, w in _object(d.get("warm"), "warm").items()},
                   retune_run=d.get(RETUNE_RUN),
                   misses=MissOrigin(misses["count"], tuple(misses["levels"]), misses["run"]) if misses else None,
                   runner=Runner(runner.get("host"), runner.get("pid")) if runner else None)

    @classmethod
    def of(cls, job) -> "JobRequest":
        """A job row's (db.models.Job) request."""
        return cls.from_json(job.request, kernel=job.kernel, trials=job.budget_trials, sampler=job.sampler,
                             seed=job.seed)
