"""Reports answered again from memory while what they read stands: at fleet scale a retune,
compare or shapes report reads thousands of rows and takes a few hundred milliseconds, and the
dashboard asks for the same one again and again (bench/api_latency.py --scale).

What a report reads changes only with a new best row (bests are never updated in place), a new
trial, or a job or job key changing state; a few indexed counts say whether any did, and a
report computed under another state is computed again. The compare and shapes reports read only
best rows and the device classes their names resolve to, so only those two are counted for them:
the jobs' and keys' states took most of a compare page's time at fleet scale (two scans of 10,000
rows per request)."""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import func, select

from db import lifecycle, models
from db.session import session_scope
from tuner.db_open import open_for_read

MAX_HELD = 64  # reports kept per process; all are dropped when it is reached
_held: dict[tuple, Any] = {}


BESTS_ONLY = ("compare", "shapes", "best")  # what reads best rows and device classes, nothing else


def state(settings, kind: str = "") -> tuple:
    """A token that changes whenever anything a report of this kind reads does, in one statement
    (five round trips were most of a jobs list's reads at fleet scale)."""
    B, D, T, J, JK = models.BestConfig, models.DeviceClass, models.TuningTrial, models.Job, models.JobKey
    # every best row, superseded ones too, from the primary key alone (no join: each row has its
    # class); a new class can change what a family name resolves to
    parts = [select(func.max(B.id)), select(func.count(B.id)), select(func.max(D.id)), select(func.count(D.id))]
    if kind not in BESTS_ONLY:
        parts += [select(func.max(T.id)),
                  *(select(func.count()).select_from(J).where(J.state == st) for st in lifecycle.JOB_STATES),
                  *(select(func.count()).select_from(JK).where(JK.state == st) for st in lifecycle.KEY_STATES)]
    with session_scope(open_for_read(settings)) as s:
        return tuple(s.execute(select(*(p.scalar_subquery() for p in parts))).one())


def held(kind: str, report: Callable[..., Any], settings, *args, token: tuple | None = None) -> Any:
    """report(settings, *args), computed once per state of the database (and per settings: an
    app's settings object is its own); an error is never held. `token`: state(settings, kind),
    when the caller counted it already for another report of the same request."""
    key = (kind, id(settings), repr(args), state(settings, kind) if token is None else token)
    if key not in _held:
        if len(_held) >= MAX_HELD:
            _held.clear()
        _held[key] = report(settings, *args)
    return _held[key]
