"""The fleet as its operators see it: workers (alive, class, stack, last heartbeat), device
classes with their live workers, queue depths and trial rates, jobs by state, trial outcomes,
stale keys, runtime misses. One reader of each, for the HTTP API, the dashboard and /metrics alike.

Every function but `queue_depths` works in the caller's session; `queue_depths` asks the broker.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from db import models, store
from db.clock import utcnow
from devices.classes import ALIASES
from tuner import coordinator
from tuner.settings import Settings
from workers.queues import QUEUE_PREFIX

RATE_WINDOW_S = 60.0  # trials per minute: counted over the last minute
_apps: dict[str, object] = {}  # broker URL -> Celery app (building one costs ~50 ms)


def aliases_of(slug: str) -> list[str]:
    """The families a class answers to (h100 for h100-sxm-80gb)."""
    return sorted(a for a, slugs in ALIASES.items() if slug in slugs)


def is_alive(worker: models.Worker, dead_after_s: float) -> bool:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    return worker.stopped_at is None and worker.heartbeat_at is not None and worker.heartbeat_at >= cutoff


def workers(s, dead_after_s: float) -> list[dict]:
    """Every worker that has registered, live ones first, newest heartbeat first."""
    rows = s.execute(select(models.Worker, models.DeviceClass.slug, models.StackFingerprint)
                     .outerjoin(models.DeviceClass, models.DeviceClass.id == models.Worker.device_class_id)
                     .outerjoin(models.StackFingerprint, models.StackFingerprint.id == models.Worker.fingerprint_id)
                     ).all()
    out = [{"name": w.name, "hostname": w.hostname, "pid": w.pid, "device": w.device, "device_class": slug,
            "fingerprint": fp.hash if fp else None,
            "stack": {k: getattr(fp, k) for k in ("driver", "runtime", "triton", "torch")} if fp else None,
            "alive": is_alive(w, dead_after_s),
            "started_at": _iso(w.started_at), "heartbeat_at": _iso(w.heartbeat_at), "stopped_at": _iso(w.stopped_at)}
           for w, slug, fp in rows]
    return sorted(out, key=lambda w: (not w["alive"], -(_ts(w["heartbeat_at"]))))


def device_classes(s, dead_after_s: float, depths: dict[str, int] | None = None) -> list[dict]:
    """Stored device classes, each with its live workers (per fingerprint), trials in the last
    minute, and the queues its workers consume with their depths (None: broker not asked or down)."""
    live: dict[str, dict[str, int]] = {}
    for w in workers(s, dead_after_s):
        if w["alive"] and w["device_class"]:
            per_fp = live.setdefault(w["device_class"], {})
            per_fp[w["fingerprint"]] = per_fp.get(w["fingerprint"], 0) + 1
    rate = trials_last_minute(s)
    out = []
    for dc in s.scalars(select(models.DeviceClass).order_by(models.DeviceClass.slug)).all():
        queues = [QUEUE_PREFIX + name for name in (dc.slug, *aliases_of(dc.slug))]
        out.append({"slug": dc.slug, "vendor": dc.vendor, "arch": dc.arch, "name": dc.name,
                    "compute_units": dc.compute_units, "memory_gb": dc.memory_gb, "aliases": aliases_of(dc.slug),
                    "live_workers": sum(live.get(dc.slug, {}).values()), "live_by_fingerprint": live.get(dc.slug, {}),
                    "trials_per_minute": rate.get(dc.slug, 0),
                    "queues": {q: (depths or {}).get(q) for q in queues}})
    return out


def queue_names(s) -> list[str]:
    """The class queues worth reading: those of every stored class and family, and those that
    unfinished jobs were sent to (a class no worker has registered yet)."""
    names = set()
    for slug in s.scalars(select(models.DeviceClass.slug)).all():
        names.update(QUEUE_PREFIX + n for n in (slug, *aliases_of(slug)))
    names.update(QUEUE_PREFIX + sel for sel in s.scalars(select(models.Job.device_selector).distinct().where(
        models.Job.state.not_in(coordinator.FINAL), models.Job.device_selector.is_not(None))).all())
    return sorted(names)


def queue_depths(settings: Settings, names: list[str]) -> dict[str, int] | None:
    """Messages waiting per queue, from the broker; None when the broker cannot be reached."""
    from workers.app import make_app
    from workers.app import queue_depths as read

    app = _apps.get(settings.broker_url) or _apps.setdefault(settings.broker_url, make_app(settings.broker_url))
    try:
        return read(app, names, timeout=1.0)
    except ConnectionError:
        return None


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
    from workers.retune import find_stale

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


def labelled_misses(s, include_tuned: bool = False) -> list[dict]:
    """runtime_misses of registered kernels and of known classes (a product this version knows, or
    one a worker registered) only: what /metrics may name, so a posted name never makes a series."""
    from devices.classes import KNOWN_DEVICES
    from search_spaces import registry

    classes = {dc.slug for dc in KNOWN_DEVICES} | set(s.scalars(select(models.DeviceClass.slug)))
    kernels = set(registry.names())
    return [m for m in runtime_misses(s, include_tuned=include_tuned)
            if m["kernel"] in kernels and m["device_class"] in classes]


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _ts(iso: str | None) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp() if iso else 0.0
