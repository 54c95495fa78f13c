"""Search strategies: how the next configuration of a key's study is chosen.

One code path serves the live search (workers/search.py, on the shared RDB study, several
workers at once) and the offline replay (bench/search_efficiency.py, on recorded sweeps), so
what is replayed is what runs. A strategy's state is derived from the study's trials only,
which keeps it cooperative: any worker can take the next step.

  random  Optuna's RandomSampler.
  grid    the valid configurations in a seeded shuffled order.
  tpe     Optuna's multivariate TPE.
  auto    (default) the kernel's default and known-good configurations and the best of the
          nearest stored shapes first, then TPE alternating with a pattern step: the best
          unmeasured neighbour (one parameter one step away) of the incumbent.
Every strategy is constraint-aware in the same way: a proposal that the kernel's `check`
rejects, or one already measured, is told to Optuna at once, costs no trial, and is repaired
to an unmeasured valid configuration (`Strategy.repair`) that is asked for next.
"""
from __future__ import annotations

import random
import weakref
from dataclasses import dataclass
from typing import Callable

import optuna

from search_spaces.base import Config, KernelSpec, Target, TuningKey, config_hash, nearest

STRATEGIES = ("auto", "tpe", "random", "grid")
MAX_IDLE_PROPOSALS = 200
STARTUP_TRIALS = 8  # TPE's random trials before it models anything
Seen = dict[str, tuple[str, "float | None"]]  # config_hash -> (status, median_ms)


@dataclass(frozen=True)
class Strategy:
    name: str
    seed: int | None

    def sampler(self) -> optuna.samplers.BaseSampler:
        if self.name in ("tpe", "auto"):
            # multivariate TPE models the interaction of tile sizes; constant_liar keeps
            # cooperating workers from proposing the point another is measuring
            return optuna.samplers.TPESampler(seed=self.seed, multivariate=True, constant_liar=True,
                                              n_startup_trials=STARTUP_TRIALS)
        return optuna.samplers.RandomSampler(seed=self.seed)

    def seeds(self, spec: KernelSpec, key: TuningKey, target: Target, warm: list[Config] = ()) -> list[Config]:
        """Configurations enqueued when the study is created (valid ones, in order, no repeats)."""
        if self.name != "auto":
            return []
        out, hashes = [], set()
        # the kernel's lists come likeliest first; as many as TPE would draw at random instead
        for c in [spec.default(key, target), *warm, *spec.known_good(key, target)[:STARTUP_TRIALS]]:
            if spec.check(c, key, target) is not None:
                # the best of a neighbouring shape may not fit this one: start from its nearest fit
                valid = valid_configs(spec, key, target)
                if not valid:
                    continue
                c = nearest(valid, c)
            if config_hash(c) not in hashes:
                hashes.add(config_hash(c))
                out.append(c)
        return out

    def next_config(self, spec: KernelSpec, key: TuningKey, target: Target, seen: Seen,
                    counted: int) -> Config | None:
        """A configuration to enqueue before the next ask, or None to let the sampler propose."""
        if self.name == "grid":
            valid = valid_by_hash(spec, key, target)
            order = list(valid)
            random.Random(self.seed or 0).shuffle(order)  # seeded, so a budget < grid is unbiased
            return next((valid[h] for h in order if h not in seen), None)
        if self.name == "auto":
            told = sum(1 for status, _ in seen.values() if status not in ("pending", "invalid"))
            # with trials in flight (a GPU's compile pool), TPE is still drawing its startup trials
            # at random for a while after the seeds: step around the incumbent instead
            blind = told < counted and told < STARTUP_TRIALS
            if blind or (counted >= STARTUP_TRIALS and counted % 2 == 0):
                return pattern_step(spec, key, target, seen, random.Random((self.seed or 0) * 7919 + counted))
        return None

    def exhausted(self, spec: KernelSpec, key: TuningKey, target: Target, seen: Seen) -> bool:
        return self.name == "grid" and self.next_config(spec, key, target, seen, 0) is None

    def repair(self, spec: KernelSpec, key: TuningKey, target: Target, seen: Seen, proposal: Config,
               rng: random.Random) -> Config | None:
        """What to measure instead of a proposal that is invalid or already measured: the
        unmeasured valid configuration nearest to it (log2 steps), or for random search one
        drawn uniformly; None when every valid configuration is measured or in flight.

        Asking the sampler again instead wasted a second or more per trial where few points of
        the space are valid (a small M on sm_90: 16 of 4,800), and gave up with valid points
        left unmeasured."""
        free = [c for h, c in valid_by_hash(spec, key, target).items() if h not in seen]
        if not free:
            return None
        if self.name == "random":
            return rng.choice(free)
        return nearest(free, proposal)


# per spec object, not per kernel name: the replay's recorded sweeps are specs of their own
_valid_cache: "weakref.WeakKeyDictionary[KernelSpec, dict[tuple, dict[str, Config]]]" = weakref.WeakKeyDictionary()


def valid_by_hash(spec: KernelSpec, key: TuningKey, target: Target) -> dict[str, Config]:
    """config_hash -> configuration for the key's valid configurations, in the space's order;
    computed once per process (a GPU space has thousands)."""
    per_spec = _valid_cache.setdefault(spec, {})
    k = (key.stable_hash, target)
    if k not in per_spec:
        per_spec[k] = {config_hash(c): c for c in spec.valid_configs(key, target)}
    return per_spec[k]


def valid_configs(spec: KernelSpec, key: TuningKey, target: Target) -> list[Config]:
    return list(valid_by_hash(spec, key, target).values())


def _incumbent(seen: Seen, configs: dict[str, Config]) -> Config | None:
    ok = [(m, h) for h, (s, m) in seen.items() if s == "ok" and m is not None and h in configs]
    return configs[min(ok)[1]] if ok else None


def pattern_step(spec: KernelSpec, key: TuningKey, target: Target, seen: Seen, rng: random.Random) -> Config | None:
    """An unmeasured valid neighbour of the incumbent: one parameter moved one step in its value list."""
    space = spec.space(target)
    valid = valid_by_hash(spec, key, target)
    best = _incumbent(seen, valid)
    if best is None:
        return None
    neighbours = []
    for name, values in space.items():
        values = list(values)
        i = values.index(best[name]) if best[name] in values else None
        for j in ((i - 1, i + 1) if i is not None else ()):
            if 0 <= j < len(values):
                c = dict(best, **{name: values[j]})
                if config_hash(c) in valid and config_hash(c) not in seen:
                    neighbours.append(c)
    return rng.choice(neighbours) if neighbours else None


def suggest(trial: optuna.Trial, space: dict[str, tuple]) -> Config:
    return {name: trial.suggest_categorical(name, list(values)) for name, values in space.items()}


def propose(study: optuna.Study, strategy: Strategy, spec: KernelSpec, key: TuningKey, target: Target,
            seen: Seen, counted: int, on_invalid: Callable[[int, Config, str], None] | None = None
            ) -> tuple[optuna.Trial, Config] | None:
    """The next configuration worth measuring, with its Optuna trial; None when the space has
    nothing left. Invalid and already-measured proposals are told at once and cost no trial;
    the strategy's repair of one (see `Strategy.repair`) is asked for next."""
    space = spec.space(target)
    repaired: Config | None = None
    for attempt in range(MAX_IDLE_PROPOSALS):
        nxt = repaired or strategy.next_config(spec, key, target, seen, counted)
        if nxt is None and strategy.exhausted(spec, key, target, seen):
            return None
        if nxt is not None:
            study.enqueue_trial(nxt)
        trial = study.ask()
        config = suggest(trial, space)
        h = config_hash(config)
        if h in seen:
            status, median = seen[h]
            if status == "ok":
                study.tell(trial, median)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif (reason := spec.check(config, key, target)) is not None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            seen[h] = ("invalid", None)
            if on_invalid:
                on_invalid(trial.number, config, reason)
        else:
            return trial, config
        rng = random.Random((strategy.seed or 0) * 104729 + counted * 31 + attempt)
        repaired = strategy.repair(spec, key, target, seen, config, rng)
        if repaired is None:
            return None  # every valid configuration is measured or in flight
    return None

