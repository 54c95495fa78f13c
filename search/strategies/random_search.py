"""random: Optuna's RandomSampler, repaired uniformly: an invalid or repeated proposal is replaced
by a valid unmeasured configuration drawn at random, not the nearest one (which would bias it)."""
from __future__ import annotations

from search.strategies.base import Strategy, unmeasured


class RandomSearch(Strategy):
    name = "random"
    description = "uniform over the valid space"

    def repair(self, spec, key, target, seen, proposal, rng):
        free = unmeasured(spec, key, target, seen)
        return rng.choice(free) if free else None
