"""Asking a study for the next configuration worth measuring: the machinery every strategy shares.

A proposal that the kernel's `check` rejects, or one already measured, is told to Optuna at
once, costs no trial, and is repaired by the strategy (`Strategy.repair`) to an unmeasured valid
configuration that is asked for next. The live loop (search/loop.py) and the offline replay
(search/replay.py) both call `propose`, so what is replayed is what runs.
"""
from __future__ import annotations

import random
from typing import Callable

import optuna

from search.strategies.base import Seen, Strategy
from keys import Config, TuningKey, config_hash
from devices.targets import Target
from search_spaces.base import KernelSpec

MAX_IDLE_PROPOSALS = 200


def tell(study: optuna.Study, trial: optuna.Trial | int, value: float | None = None) -> None:
    """Tell a trial its time (None: failed), unless it has ended already: with several processes on a
    study, another may have ended it first (search/studies.py `recover`: the trial of a worker that
    was stopped, or whose stored result it found), and that is not an error."""
    try:
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(trial, value, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def suggest(trial: optuna.Trial, space: dict[str, tuple]) -> Config:
    return {name: trial.suggest_categorical(name, list(values)) for name, values in space.items()}


def propose(study: optuna.Study, strategy: Strategy, spec: KernelSpec, key: TuningKey, target: Target,
            seen: Seen, counted: int, on_invalid: Callable[[int, Config, str], None] | None = None, *,
            preferred: Config | None = None, claim: Callable[[optuna.Trial, Config], bool] | None = None
            ) -> tuple[optuna.Trial, Config] | None:
    """The next configuration worth measuring, with its Optuna trial; None when the space has
    nothing left. Invalid and already-measured proposals are told at once and cost no trial;
    the strategy's repair of one (see `Strategy.repair`) is asked for next. `preferred` is
    asked for before the strategy is; `claim` takes a valid proposal for this measurer, and one
    it refuses (another worker's, in flight) is told and repaired like a measured one."""
    space = spec.space(target)
    repaired: Config | None = preferred
    for attempt in range(MAX_IDLE_PROPOSALS):
        nxt = repaired or strategy.next_config(spec, key, target, seen, counted)
        if nxt is None and strategy.exhausted(spec, key, target, seen):
            return None
        if nxt is not None:
            study.enqueue_trial(nxt)
        trial = study.ask()
        try:
            config = suggest(trial, space)
        except optuna.exceptions.UpdateFinishedTrialError:
            # this process stood still between ask and suggest (stopped, starved) for longer than
            # the heartbeat's grace, and another worker failed the trial as stale and re-enqueued
            # what it held: nothing of it is ours to measure, ask again
            continue
        h = config_hash(config)
        if h in seen:
            status, median = seen[h]
            tell(study, trial, median if status == "ok" else None)
        elif (reason := spec.check(config, key, target)) is not None:
            tell(study, trial)
            seen[h] = ("invalid", None)
            if on_invalid:
                on_invalid(trial.number, config, reason)
        elif claim is None or claim(trial, config):
            return trial, config
        else:
            seen[h] = ("pending", None)
            tell(study, trial)
        rng = random.Random((strategy.seed or 0) * 104729 + counted * 31 + attempt)
        repaired = strategy.repair(spec, key, target, seen, config, rng)
        if repaired is None:
            return None  # every valid configuration is measured or in flight
    return None

