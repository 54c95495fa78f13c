"""Aggregates over a finished key's trials, computed once and held in memory: a key of a long
search holds 100,000 trials, and grouping or counting them took 30 ms of every read of its job's
status and of its key page, 300 ms with eight clients at once (bench/api_latency.py --scale).

Once no job runs the key, its trials change only by a trial stored later (a straggler of a
cancelled batch, a job that runs the key again), which takes a higher id than any the held value
saw: the newest trial's id, one read of an index (ix_trials_job_key_order, ix_trials_key_order),
is part of the token a value is held under. While the key runs, everything is computed afresh:
concurrent workers' trials commit out of id order, so the newest id alone could miss one."""
from __future__ import annotations

from typing import Any, Callable

from db import lifecycle

SETTLED = lifecycle.KEY_END_STATES  # a job key's states in which no worker stores its trials
MAX_HELD = 1024  # values kept per process; all are dropped when it is reached
_held: dict[tuple, Any] = {}


def held(token: tuple, compute: Callable[[], Any]) -> Any:
    """compute(), once per token (which must name the database, the key and its newest trial)."""
    if token not in _held:
        value = compute()
        if len(_held) >= MAX_HELD:
            _held.clear()
        _held[token] = value
    return _held[token]
