"""A strategy written outside the package, as a user would: the valid configurations in the
space's order. Registered with TUNER_STRATEGY_MODULES=tests.strategies.in_order."""
from search.strategies.base import Strategy, unmeasured


class InOrder(Strategy):
    name = "in_order"
    description = "the valid space in its own order"

    def next_config(self, spec, key, target, seen, counted):
        free = unmeasured(spec, key, target, seen)
        return free[0] if free else None

    def exhausted(self, spec, key, target, seen):
        return not unmeasured(spec, key, target, seen)
