"""grid: the valid configurations in a seeded shuffled order, so a budget smaller than the grid is
an unbiased sample; the search ends when every one is measured."""
from __future__ import annotations

import random

from search.strategies.base import Strategy, valid_by_hash


class Grid(Strategy):
    name = "grid"
    description = "every valid configuration, in a seeded order"

    def next_config(self, spec, key, target, seen, counted):
        valid = valid_by_hash(spec, key, target)
        order = list(valid)
        random.Random(self.seed or 0).shuffle(order)
        return next((valid[h] for h in order if h not in seen), None)

    def exhausted(self, spec, key, target, seen):
        return self.next_config(spec, key, target, seen, 0) is None
