"""auto (the default): the kernel's default, the best configurations of the nearest stored shapes
and the kernel's known-good list first, then multivariate TPE alternating with a pattern step
(an unmeasured valid neighbour of the incumbent: one parameter one step along its value list)."""
from __future__ import annotations

import random

from search.strategies.base import STARTUP_TRIALS, Strategy, incumbent, valid_by_hash, valid_configs
from search.strategies.tpe import tpe_sampler
from keys import Config, TuningKey, config_hash, nearest
from devices.targets import Target
from search_spaces.base import KernelSpec


class Auto(Strategy):
    name = "auto"
    description = "seeds, then TPE alternating with pattern steps"

    def sampler(self):
        return tpe_sampler(self.seed)

    def seeds(self, spec, key, target, warm=()):
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

    def next_config(self, spec, key, target, seen, counted):
        told = sum(1 for status, _ in seen.values() if status not in ("pending", "invalid"))
        # with trials in flight (a GPU's compile pool), TPE is still drawing its startup trials
        # at random for a while after the seeds: step around the incumbent instead
        blind = told < counted and told < STARTUP_TRIALS
        if blind or (counted >= STARTUP_TRIALS and counted % 2 == 0):
            return pattern_step(spec, key, target, seen, random.Random((self.seed or 0) * 7919 + counted))
        return None


def pattern_step(spec: KernelSpec, key: TuningKey, target: Target, seen, rng: random.Random) -> Config | None:
    """An unmeasured valid neighbour of the incumbent: one parameter moved one step in its value list."""
    space = spec.space(target)
    valid = valid_by_hash(spec, key, target)
    best = incumbent(seen, valid)
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
