"""The search replayed offline, on a recorded exhaustive sweep: every strategy through the same
`Proposals` (and so the same `propose`) as the live loop, with each measurement looked up in the
sweep instead of run. bench/search_efficiency.py records sweeps and reports replays.

A sweep is a gzip JSON document (format "tuner-sweep"): the kernel, its key, the device class,
the stack, and one row per configuration of the space with its time (the fastest round's median)
and status; bench/data/ holds the recorded ones.
"""
from __future__ import annotations

import collections
import gzip
import itertools
import json
import statistics
from pathlib import Path

import optuna

from search import strategies
from search.loop import Proposals
from search_spaces import registry
from keys import Config, TuningKey, config_hash
from devices.classes import class_for
from devices.targets import Target
from search_spaces.base import KernelSpec


class SweepSpec(KernelSpec):
    """A kernel whose space, validity and timings come from a recorded sweep; its default and
    known-good lists are the real kernel's (withheld when `use_known_good` is off)."""

    def __init__(self, doc: dict):
        self.name = doc["kernel"]
        self.key_names = tuple(doc.get("key", {}).get("dims", ()))
        self.params = doc["params"]
        self.times: dict[str, float | None] = {}
        values: dict[str, list] = {p: [] for p in self.params}
        columns = doc.get("columns", self.params + ["median_ms", "status"])
        ms = columns.index("ms" if "ms" in columns else "median_ms")  # version 1 named it median_ms
        status = columns.index("status")
        for row in doc["rows"]:
            config = dict(zip(self.params, row[:len(self.params)]))
            self.times[config_hash(config)] = row[ms] if row[status] == "ok" else None
            for p in self.params:
                if config[p] not in values[p]:
                    values[p].append(config[p])
        self._space = {p: tuple(sorted(v)) for p, v in values.items()}
        self.real = registry.get(self.name)
        self.use_known_good = True

    def space(self, target):
        return self._space

    def check(self, config, key, target):
        return None if config_hash(config) in self.times else "not a valid point of the recorded sweep"

    def valid_configs(self, key, target):
        configs = (dict(zip(self._space, vals)) for vals in itertools.product(*self._space.values()))
        return [c for c in configs if self.check(c, key, target) is None]

    def default(self, key, target):
        return self.real.default(key, target)

    def known_good(self, key, target):
        return self.real.known_good(key, target) if self.use_known_good else []


def load(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def target_of(doc: dict) -> Target:
    """The target of the class a sweep was recorded on (devices/classes.py owns each class's)."""
    return class_for(doc["device_class"]).target


def replay_one(spec: SweepSpec, key: TuningKey, target: Target, strategy_name: str, seed: int, budget: int,
               width: int = 1) -> list[float]:
    """Best time after each counted evaluation (failed evaluations count, never become best).

    strategy_name: a registered strategy; "NAME-cold" is NAME with the kernel's known-good list
    withheld (what the search finds on its own when the author's hints do not fit the device).
    width: proposals in flight, as the live search keeps them on a GPU (as many as the compile
    pool builds at once, the next proposed when one is told); here they are told oldest first."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec.use_known_good = not strategy_name.endswith("-cold")
    strategy = strategies.make(strategy_name.removesuffix("-cold"), seed)
    study = optuna.create_study(sampler=strategy.sampler(), direction="minimize")
    book = Proposals(study, strategy, spec, key, target, {}, first=strategy.seeds(spec, key, target))
    best, curve = float("inf"), []
    flight: collections.deque[tuple[optuna.Trial, Config]] = collections.deque()
    proposing = True
    while len(curve) < budget:
        while proposing and len(flight) < width and len(curve) + len(flight) < budget:
            proposal = book.next(len(curve))
            if proposal is None:
                proposing = False
                break
            flight.append(proposal)
        if not flight:
            break
        trial, config = flight.popleft()
        t = spec.times.get(config_hash(config))
        book.tell(trial, config, "ok" if t is not None else "crashed", t)
        if t is not None:
            best = min(best, t)
        curve.append(best)
    while len(curve) < budget:  # the space ran out: the best stays
        curve.append(best)
    return curve


def noise(doc: dict) -> dict | None:
    """How far a configuration's rounds differ (slowest over fastest round, median over the
    configurations): a fraction of the optimum finer than this is the machine, not the search."""
    if "round_ms" not in doc.get("columns", []):
        return None
    i = doc["columns"].index("round_ms")
    spreads = sorted(max(r[i]) / min(r[i]) - 1 for r in doc["rows"] if len(r[i]) > 1 and min(r[i]) > 0)
    return {"rounds": doc.get("rounds"), "median_round_spread": round(statistics.median(spreads), 4)} if spreads else None
