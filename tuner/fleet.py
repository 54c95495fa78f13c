"""The fleet as its operators see it: workers (alive, class, stack, last heartbeat), device
classes with their live workers, queue depths and trial rates, jobs by state, trial outcomes,
stale keys, runtime misses. One reader of each, for the HTTP API, the dashboard and /metrics alike.

Every function but `queue_depths` works in the caller's session; `queue_depths` asks the broker.
"""
from __future__ import annotations

import math
import threading
import time
from datetime import timedelta

from sqlalchemy import and_, case, func, select

from db import lifecycle, models, store
from db.clock import utcnow
from devices.classes import ALIASES
from tuner.db_open import open_for_read
from tuner.errors import UserError
from tuner.settings import Settings
from workers.queues import QUEUE_PREFIX, is_class_queue

RATE_WINDOW_S = 60.0  # trials per minute: counted over the last minute
_apps: dict[str, object] = {}  # broker URL -> Celery app (building one costs ~50 ms)


def aliases_of(slug: str) -> list[str]:
    """The families a class answers to (h100 for h100-sxm-80gb)."""
    return sorted(a for a, slugs in ALIASES.items() if slug in slugs)


def is_alive(worker: models.Worker, dead_after_s: float) -> bool:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    return worker.stopped_at is None and worker.heartbeat_at is not None and worker.heartbeat_at >= cutoff


def workers(s, dead_after_s: float, limit: int | None = None) -> list[dict]:
    """Registered workers, live ones first, newest heartbeat first: at most `limit` (a fleet keeps
    the rows of every worker that ever ran until TUNER_WORKERS_KEEP_DAYS, thousands, which a page
    must not list whole). `state`: live, crashed (silent past the grace without deregistering) or
    stopped (deregistered); `job`, `kernel`, `key`: the job key it holds (workers.holding_key_id,
    rewritten with every heartbeat; a crashed worker's is what it ran when it went silent)."""
    W, K = models.Worker, models.JobKey
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    live = and_(W.stopped_at.is_(None), W.heartbeat_at >= cutoff)
    order = (case((live, 0), else_=1), W.heartbeat_at.desc().nulls_last(), W.id)
    # the page's workers chosen from the workers table alone, then joined: joined first, PostgreSQL
    # hashed every job and job key (10,000 each at fleet scale) before it kept 100 rows (14 ms)
    top = select(W.id).order_by(*order).limit(limit).subquery()
    F = models.StackFingerprint
    # columns, not entities: loading five ORM objects a row cost 9 ms of a fleet page (SQL: 1.5 ms)
    q = (select(W.name, W.hostname, W.pid, W.device, W.started_at, W.heartbeat_at, W.stopped_at,
                models.DeviceClass.slug, F.hash, F.driver, F.runtime, F.triton, F.torch,
                K.id.label("key_id"), K.job_id, K.key_hash, K.key, models.Job.kernel)
         .join(top, top.c.id == W.id)
         .outerjoin(models.DeviceClass, models.DeviceClass.id == W.device_class_id)
         .outerjoin(F, F.id == W.fingerprint_id)
         .outerjoin(K, K.id == W.holding_key_id).outerjoin(models.Job, models.Job.id == K.job_id)
         .order_by(*order))
    out = []
    for w in s.execute(q).all():
        held = w.key_id is not None
        key = w.key if held and isinstance(w.key, dict) else {}
        out.append({"name": w.name, "hostname": w.hostname, "pid": w.pid, "device": w.device,
                    "device_class": w.slug, "fingerprint": w.hash,
                    "stack": {k: getattr(w, k) for k in ("driver", "runtime", "triton", "torch")} if w.hash else None,
                    "alive": is_alive(w, dead_after_s), "state": worker_state(w, dead_after_s),
                    "job": w.job_id if held else None, "kernel": w.kernel if held else None,
                    "key_hash": w.key_hash if held else None, "key": key.get("dims"), "dtype": key.get("dtype"),
                    "started_at": _iso(w.started_at), "heartbeat_at": _iso(w.heartbeat_at),
                    "stopped_at": _iso(w.stopped_at)})
    return out


def worker_state(w: models.Worker, dead_after_s: float) -> str:
    """live, stopped (it deregistered: a clean stop) or crashed (its heartbeat lapsed)."""
    if w.stopped_at is not None:
        return "stopped"
    return "live" if is_alive(w, dead_after_s) else "crashed"


def prune(settings: Settings, keep_days: float) -> int:
    """`tuner workers prune`: the janitor's pruning of gone workers' rows, now and under no lease."""
    from workers.janitor import prune_in_batches  # Optuna's import, for this command only

    if not math.isfinite(keep_days) or keep_days < 0:
        raise UserError(f"--keep-days {keep_days:g} is not a number of days >= 0")
    return prune_in_batches(open_for_read(settings), keep_days, settings.worker_dead_after_s)


def worker_counts(s, dead_after_s: float) -> dict[str, int]:
    """Workers by state, counted in SQL: live, crashed (silent past the grace, never stopped), stopped."""
    W = models.Worker
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    state = case((W.stopped_at.is_not(None), "stopped"), (W.heartbeat_at >= cutoff, "live"), else_="crashed")
    return {"live": 0, "crashed": 0, "stopped": 0, **dict(s.execute(select(state, func.count()).group_by(state)).all())}


def live_by_class(s, dead_after_s: float) -> dict[str, dict[str, int]]:
    """Per class slug, live workers per stack fingerprint, counted in SQL."""
    W = models.Worker
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    rows = s.execute(select(models.DeviceClass.slug, models.StackFingerprint.hash, func.count()).select_from(W)
                     .join(models.DeviceClass, models.DeviceClass.id == W.device_class_id)
                     .join(models.StackFingerprint, models.StackFingerprint.id == W.fingerprint_id)
                     .where(W.stopped_at.is_(None), W.heartbeat_at >= cutoff)
                     .group_by(models.DeviceClass.slug, models.StackFingerprint.hash)).all()
    out: dict[str, dict[str, int]] = {}
    for slug, fp, n in rows:
        out.setdefault(slug, {})[fp] = n
    return out


def device_classes(s, dead_after_s: float, depths: dict[str, int] | None = None) -> list[dict]:
    """Stored device classes, each with its live workers (per fingerprint), trials in the last
    minute, and the queues its workers consume with their depths (None: broker not asked or down)."""
    live = live_by_class(s, dead_after_s)
    rate = trials_last_minute(s)
    out = []
    for dc in s.scalars(select(models.DeviceClass).order_by(models.DeviceClass.slug)).all():
        queues = [QUEUE_PREFIX + name for name in (dc.slug, *aliases_of(dc.slug))]
        out.append({"slug": dc.slug, "vendor": dc.vendor, "arch": dc.arch, "name": dc.name,
                    "compute_units": dc.compute_units, "memory_gb": dc.memory_gb, "aliases": aliases_of(dc.slug),
                    "live_workers": sum(live.get(dc.slug, {}).values()), "live_by_fingerprint": live.get(dc.slug, {}),
                    "trials_per_minute": rate.get(dc.slug, 0),
                    "queues": {q: (depths or {}).get(q) for q in queues}, "registered": True})
    # work queued for a class that no worker ever registered (no stored class consumes its queue):
    # listed too, else it sits unseen while /metrics counts its messages
    covered = {q for c in out for q in c["queues"]}
    for q, n in sorted((depths or {}).items()):
        if q not in covered and n and is_class_queue(q):
            out.append({"slug": q[len(QUEUE_PREFIX):], "vendor": None, "arch": None, "name": None,
                        "compute_units": None, "memory_gb": None, "aliases": [], "live_workers": 0,
                        "live_by_fingerprint": {}, "trials_per_minute": 0, "queues": {q: n}, "registered": False})
    for c in out:
        waiting = sum(n for n in c["queues"].values() if n)
        c["waiting"], c["no_live_worker"] = waiting, bool(waiting) and not c["live_workers"]
    return out


def queues(s, dead_after_s: float, depths: dict[str, int] | None) -> list[dict]:
    """Every class queue with messages waiting, with the live workers that consume it; `unserved`:
    messages and no live worker to take them (a class whose workers all went, or never came)."""
    waiting = {q: n for q, n in (depths or {}).items() if n and is_class_queue(q)}
    consumers = queue_consumers(s, dead_after_s, list(waiting))
    return [{"queue": q, "messages": n, "live_workers": consumers.get(q, 0), "unserved": not consumers.get(q, 0)}
            for q, n in sorted(waiting.items())]


def queue_names(s) -> list[str]:
    """The class queues worth reading: those of every stored class and family, and those that
    unfinished jobs were sent to (a class no worker has registered yet)."""
    names = set()
    for slug in s.scalars(select(models.DeviceClass.slug)).all():
        names.update(QUEUE_PREFIX + n for n in (slug, *aliases_of(slug)))
    names.update(_queue_of(sel) for sel in s.scalars(select(models.Job.device_selector).distinct().where(
        models.Job.state.not_in(lifecycle.END_STATES), models.Job.device_selector.is_not(None))).all())
    return sorted(names)


def _queue_of(selector: str) -> str:
    """The queue the coordinator sent a job of this selector to (workers.queues.queue_for)."""
    from workers.queues import queue_for

    try:
        return queue_for(selector)
    except Exception:  # a selector no class answers to any more: its raw name is the queue
        return QUEUE_PREFIX + selector


DEPTHS_S = 2.0  # queue depths a read of the broker stays good for (every page and scrape asks)
_depths_lock = threading.Lock()
_depths: dict[tuple, tuple[float, dict[str, int] | None]] = {}


def queue_depths(settings: Settings, names: list[str]) -> dict[str, int] | None:
    """Messages waiting per queue, from the broker; None when the broker cannot be reached. One
    request at a time reads the broker (a Celery app's connection is not for concurrent threads:
    eight clients at once held requests for 30 s) and its answer serves for DEPTHS_S (or the
    shorter TUNER_METRICS_CACHE_S: 0 reads at every request)."""
    from workers.app import make_app
    from workers.app import queue_depths as read

    key = (settings.broker_url, tuple(names))
    with _depths_lock:
        held = _depths.get(key)
        if held is not None and time.monotonic() - held[0] < min(DEPTHS_S, settings.metrics_cache_s):
            return held[1]
        app = _apps.get(settings.broker_url) or _apps.setdefault(settings.broker_url, make_app(settings.broker_url))
        try:
            depths = read(app, names, timeout=1.0)
        except ConnectionError:
            depths = None
        if len(_depths) > 64:
            _depths.clear()
        _depths[key] = (time.monotonic(), depths)
        return depths


def trials_last_minute(s) -> dict[str, int]:
    """Measured trials (not refused as invalid) stored in the last minute, per class slug."""
    since = utcnow() - timedelta(seconds=RATE_WINDOW_S)
    return dict(s.execute(select(models.DeviceClass.slug, func.count())
                          .join(models.TuningTrial, models.TuningTrial.device_class_id == models.DeviceClass.id)
                          .where(models.TuningTrial.created_at >= since, models.TuningTrial.status != "invalid")
                          .group_by(models.DeviceClass.slug)).all())


def trial_outcomes(s) -> dict[tuple[str, str], int]:
    """(class slug, status) -> trials ever stored."""
    rows = s.execute(select(models.DeviceClass.slug, models.TuningTrial.status, func.count())
                     .join(models.TuningTrial, models.TuningTrial.device_class_id == models.DeviceClass.id)
                     .group_by(models.DeviceClass.slug, models.TuningTrial.status)).all()
    return {(slug, status): n for slug, status, n in rows}


def jobs_by_state(s) -> dict[str, int]:
    return dict(s.execute(select(models.Job.state, func.count()).group_by(models.Job.state)).all())


def stale_keys(s, dead_after_s: float) -> dict[str, int]:
    """Per class slug: current bests tuned under a stack that no live worker of the class runs,
    with no retune queued yet (what `tuner retune --stale-only` would queue)."""
    from workers.stale_jobs import find_stale

    out: dict[str, int] = {}
    for st in find_stale(s, dead_after_s=dead_after_s):
        out[st.device_class] = out.get(st.device_class, 0) + 1
    return out


def runtime_misses(s, kernel: str | None = None, include_tuned: bool = False, device_classes=None,
                   limit: int | None = None) -> list[dict]:
    """Lookups runtimes served from a fallback level (as they write or post them: db.store.misses),
    most frequent first (the first `limit`); keys tuned since are left out unless include_tuned."""
    return [{"kernel": m.kernel, "kernel_version": m.kernel_version, "key": m.key["dims"], "dtype": m.dtype,
             "device_class": m.device_class, "fingerprint": m.fingerprint, "level": m.level, "count": m.count,
             "first_seen": _iso(m.first_seen), "last_seen": _iso(m.last_seen)}
            for m in store.misses(s, kernel=kernel, include_tuned=include_tuned, device_classes=device_classes,
                                  limit=limit)]


def heartbeat_ages(s) -> dict[tuple[str, str], float]:
    """(worker name, class slug) -> seconds since its last heartbeat, for every worker that has not
    stopped cleanly (a crashed one keeps aging, which is what an alert looks for)."""
    now = utcnow()
    rows = s.execute(select(models.Worker.name, models.DeviceClass.slug, models.Worker.heartbeat_at)
                     .outerjoin(models.DeviceClass, models.DeviceClass.id == models.Worker.device_class_id)
                     .where(models.Worker.stopped_at.is_(None), models.Worker.heartbeat_at.is_not(None))).all()
    return {(name, slug or ""): max(0.0, (now - beat).total_seconds()) for name, slug, beat in rows}


def queue_consumers(s, dead_after_s: float, names: list[str]) -> dict[str, int]:
    """Live workers that consume each queue (a worker listens on its class's queue and its
    families'): 0 for queued work that no live worker will take."""
    out = dict.fromkeys(names, 0)
    for slug, per_fp in live_by_class(s, dead_after_s).items():
        for name in (slug, *aliases_of(slug)):
            out[QUEUE_PREFIX + name] = out.get(QUEUE_PREFIX + name, 0) + sum(per_fp.values())
    return out


def queue_oldest(s) -> dict[str, float]:
    """Per class queue, the age in seconds of the oldest batch still waiting for a worker: the
    earliest enqueue of a key of a job no worker has started (the broker's messages carry no time)."""
    now = utcnow()
    rows = s.execute(select(models.Job.device_selector, func.min(models.JobKey.enqueued_at))
                     .join(models.JobKey, models.JobKey.job_id == models.Job.id)
                     .where(models.Job.state == lifecycle.QUEUED, models.Job.device_selector.is_not(None))
                     .group_by(models.Job.device_selector)).all()
    out: dict[str, float] = {}
    for selector, first in rows:
        queue = _queue_of(selector)
        if first is not None:
            out[queue] = max(out.get(queue, 0.0), (now - first).total_seconds())
    return out


def job_durations(s) -> list[tuple[str, float]]:
    """(kind, seconds from creation to end) of every ended job."""
    rows = s.execute(select(models.Job.kind, models.Job.created_at, models.Job.finished_at)
                     .where(models.Job.finished_at.is_not(None))).all()
    return [(kind, max(0.0, (end - start).total_seconds())) for kind, start, end in rows]


def miss_counts(s) -> dict[tuple[str, str, str], int]:
    """(class slug, kernel, level) -> launches runtimes reported served from that level, summed in
    SQL; of registered kernels and known classes only (`labelled`)."""
    M = models.RuntimeMiss
    rows = s.execute(select(M.device_class, M.kernel, M.level, func.sum(M.count))
                     .group_by(M.device_class, M.kernel, M.level)).all()
    ok = labelled(s)
    return {(dc, k, lvl): int(n) for dc, k, lvl, n in rows if ok(k, dc)}


def missed_keys(s) -> dict[str, int]:
    """Per class slug: miss rows whose key has not been tuned since, counted in SQL; of registered
    kernels and known classes only."""
    M = models.RuntimeMiss
    rows = s.execute(select(M.device_class, M.kernel, func.count()).where(~store.tuned_since(M).exists())
                     .group_by(M.device_class, M.kernel)).all()
    ok, out = labelled(s), {}
    for dc, kernel, n in rows:
        if ok(kernel, dc):
            out[dc] = out.get(dc, 0) + n
    return out


def labelled(s):
    """Whether a (kernel, class slug) may name a /metrics series: a registered kernel and a known
    class (a product this version knows, or one a worker registered), so a posted name never
    makes a series."""
    from devices.classes import KNOWN_DEVICES
    from search_spaces import registry

    classes = {dc.slug for dc in KNOWN_DEVICES} | set(s.scalars(select(models.DeviceClass.slug)))
    kernels = set(registry.names())
    return lambda kernel, slug: kernel in kernels and slug in classes


def _iso(value) -> str | None:
    return value.isoformat() if value else None
