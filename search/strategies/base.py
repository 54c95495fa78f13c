"""The contract every search strategy keeps, and what strategies share about a key's valid space.

A strategy decides which configuration of a key's study is measured next. The search loop
(search/loop.py, `propose` in search/propose.py) and the offline replay (search/replay.py) call
it the same way, so what is replayed is what runs:

  1. ``sampler()``: the Optuna sampler the study is opened with; once per batch (a worker opens
     the study anew for every batch it takes).
  2. ``seeds(spec, key, target, warm)``: configurations measured first, in order, by every job
     on the key (those the study has measured, or has in flight, are skipped). ``warm`` holds,
     likeliest first, configurations imported for this very key (`tuner import`: vLLM's files),
     the current bests of the nearest stored shapes of the class, then imported ones of the
     nearest shapes; they may not fit the key. Invalid seeds are dropped by the caller.
  3. Before every proposal: ``next_config(spec, key, target, seen, counted)`` returns a
     configuration to enqueue (then asked for), or None to let the sampler propose. When it
     returns None and ``exhausted(...)`` says so, the search of the key ends.
  4. When a proposal is invalid (the kernel's ``check`` refuses it) or already measured, it is
     told to Optuna at once and costs no trial; ``repair(..., proposal, rng)`` names what to
     ask for instead (None: nothing is left, the search ends).

State: a strategy keeps none between calls beyond its seed. What it knows comes from ``seen``
(config_hash -> (status, median_ms) of every stored trial of the study, "pending" for those in
flight) and ``counted`` (trials counted against the budget, those in flight included), so any
worker of the class can take the next step of a shared study, and a killed worker loses nothing
a strategy needs.

A strategy of your own: subclass `Strategy` with a ``name`` in a module named in
``TUNER_STRATEGY_MODULES`` (or the ``tuner.strategies`` entry-point group); `tuner tune
--sampler NAME`, `tuner submit` and the replay find it by that name.
"""
from __future__ import annotations

import random
import weakref
from typing import ClassVar

import optuna

from keys import Config, TuningKey, config_hash, nearest
from devices.targets import Target
from search_spaces.base import KernelSpec

Seen = dict[str, tuple[str, "float | None"]]  # config_hash -> (status, median_ms)
STARTUP_TRIALS = 8  # TPE's random trials before it models anything


class Strategy:
    """Random search over the valid space, and the defaults every strategy starts from."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=self.seed)

    def seeds(self, spec: KernelSpec, key: TuningKey, target: Target, warm: list[Config] = ()) -> list[Config]:
        return []

    def next_config(self, spec: KernelSpec, key: TuningKey, target: Target, seen: Seen,
                    counted: int) -> Config | None:
        return None

    def exhausted(self, spec: KernelSpec, key: TuningKey, target: Target, seen: Seen) -> bool:
        return False

    def repair(self, spec: KernelSpec, key: TuningKey, target: Target, seen: Seen, proposal: Config,
               rng: random.Random) -> Config | None:
        """The unmeasured valid configuration nearest to the proposal (log2 steps); None when
        every valid configuration is measured or in flight.

        Asking the sampler again instead wasted a second or more per trial where few points of
        the space are valid (a small M on sm_90: 16 of 4,800), and gave up with valid points
        left unmeasured."""
        free = unmeasured(spec, key, target, seen)
        return nearest(free, proposal) if free else None


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


def unmeasured(spec: KernelSpec, key: TuningKey, target: Target, seen: Seen) -> list[Config]:
    """The valid configurations neither measured nor in flight, in the space's order."""
    return [c for h, c in valid_by_hash(spec, key, target).items() if h not in seen]


def incumbent(seen: Seen, configs: dict[str, Config]) -> Config | None:
    """The fastest configuration measured ok, of those in configs."""
    ok = [(m, h) for h, (s, m) in seen.items() if s == "ok" and m is not None and h in configs]
    return configs[min(ok)[1]] if ok else None
