"""Read commands over stored results and the registry, for the CLI and the HTTP API alike:
`tuner kernels`, `tuner best`, `tuner history`, and a key's page (its trials and its bests)."""
from __future__ import annotations

from sqlalchemy import func, select

from db import lifecycle, models, store
from db.session import session_scope
from devices.classes import matches, resolve_device_class
from devices.probe import probe
from search_spaces import registry
from tuner import settled
from tuner.db_open import open_for_read
from tuner.request import build_request
from tuner.settings import Settings


def kernel_rows() -> list[dict]:
    """The registered kernels: name, version, key, dtypes, how many configurations are valid on
    sm_90, gfx942 and the interpreter at a shape and dtype the kernel serves (its example shape;
    float16 where it takes it), and the module that defines each. A kernel whose space cannot be
    counted says why in its row instead of stopping the listing."""
    from devices.targets import target_for

    rows = []
    for name in registry.names():
        spec = registry.get(name)
        dims = spec.example_dims()
        dtype = "float16" if "float16" in spec.dtypes else spec.dtypes[0]
        sizes: dict[str, int | str] = {}
        for arch in ("sm_90", "gfx942", "interpreter"):
            try:
                sizes[arch] = len(spec.valid_configs(spec.make_key(dims, dtype), target_for(arch)))
            except Exception as exc:
                sizes[arch] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
        rows.append({"name": name, "version": spec.version, "key": list(spec.key_names),
                     "dtypes": list(spec.dtypes), "example_shape": dims, "counted_at": dtype,
                     "valid_configs": sizes, "module": type(spec).__module__})
    return rows


def device_class_slugs(url: str, device_class: str | None, settings: Settings | None) -> list[str] | None:
    """Stored device-class slugs that an alias or slug names. None given: the live class when
    settings are given (the CLI, on the machine it runs on), else None: every class (the API).
    SpecError (one line at the CLI) for a selector that names no class."""
    if device_class is None:
        return [probe(settings.device)[0].slug] if settings is not None else None
    resolve_device_class(device_class)
    with session_scope(url) as s:
        slugs = s.scalars(select(models.DeviceClass.slug)).all()
    return [slug for slug in slugs if matches(device_class, slug)] or [device_class]


def best_rows(settings: Settings, kernel: str, shapes: list[str], dtypes: list[str],
              device_class: str | None, current_only: bool = True, live_class: bool = True) -> list[dict]:
    """`tuner best` (current rows; a row with config None when nothing is stored) and
    `tuner history` (every row, superseded ones too), newest first. No device class given: this
    machine's (live_class), or every class."""
    req = build_request(kernel, shapes, dtypes, trials=1)
    url = open_for_read(settings)
    slugs = device_class_slugs(url, device_class, settings if live_class else None)
    out = []
    with session_scope(url) as s:
        for key in req.keys:
            found = store.best_configs(s, kernel=kernel, kernel_version=key.version, key_hash=key.stable_hash,
                                       device_classes=slugs, current=current_only)
            if not found and current_only:
                out.append({"key": key.label(), "device_class": ",".join(slugs or ["any"]), "fingerprint": None,
                            "config": None, "median_ms": None})
            for b, slug, fp in found:
                out.append({"key": key.label(), "device_class": slug, "fingerprint": fp.hash, "config": b.config,
                            "median_ms": b.median_ms, "default_ms": b.default_ms, "speedup": b.speedup,
                            "trials": b.trials, "job": b.job_id, "created_at": b.created_at.isoformat(),
                            "superseded_at": b.superseded_at.isoformat() if b.superseded_at else None})
    return out


TRIALS_PAGE = 100  # trials a key's view lists at once (`limit`, at most MAX_TRIALS_PAGE; `after` pages on)
MAX_TRIALS_PAGE = 1000
PLOT_POINTS = 1500  # a plot of more trials shows each bucket's fastest and its failures, per stack


def key_page(s, kernel: str, key_hash: str, slugs: list[str] | None, limit: int = TRIALS_PAGE,
             after: int | None = None) -> dict | None:
    """A key: a page of its trials on the classes (all when slugs is None), oldest first, from
    trial id `after` on (`next` names the page after), how many there are, every best the key
    has had there, newest first, each with its stack, and whether a job searches it now
    (`searching`); None when nothing of the key is stored. A key of a long search holds 100,000
    trials: none of this reads them all. Once no job runs the key, the answer is held per state
    of its rows (tuner/settled.py): one statement says whether anything changed, instead of the
    five that build it (10 ms of every read of a dashboard's key page at fleet scale)."""
    token = _key_token(s, kernel, key_hash, slugs)
    if token["open"]:  # workers store trials now, committing out of id order: always afresh
        return _key_page(s, kernel, key_hash, slugs, limit, after, token)
    return settled.held((str(s.get_bind().url), "key page", kernel, key_hash, tuple(slugs or ()), slugs is None,
                         limit, after, tuple(token.values())),
                        lambda: _key_page(s, kernel, key_hash, slugs, limit, after, token))


def _key_token(s, kernel: str, key_hash: str, slugs: list[str] | None) -> dict:
    """What a key's page depends on, in one statement: whether any of its job keys is open (a
    batch or a finalization may still store trials), whether an unfinished job searches it, its
    newest trial's id and its best rows' (highest id, count) on the classes (a best is superseded
    by a newer row, never replaced: the two change whenever its history does)."""
    T, J, JK = models.TuningTrial, models.Job, models.JobKey
    open_keys = (select(JK.id).join(J, J.id == JK.job_id)
                 .where(J.kernel == kernel, JK.key_hash == key_hash, JK.state.in_(lifecycle.OPEN_KEY_STATES)))
    row = s.execute(select(
        open_keys.exists(), open_keys.where(J.state.not_in(lifecycle.END_STATES)).exists(),
        _of_key(select(func.max(T.id)), kernel, key_hash, slugs).scalar_subquery(),
        *store.best_rows_mark(kernel=kernel, key_hashes=[key_hash], device_classes=slugs))).one()
    return dict(zip(("open", "searching", "newest", "best_id", "bests"), row))


def _key_page(s, kernel: str, key_hash: str, slugs: list[str] | None, limit: int, after: int | None,
              token: dict) -> dict | None:
    key = s.scalar(select(models.JobKey.key).join(models.Job, models.Job.id == models.JobKey.job_id)
                   .where(models.Job.kernel == kernel, models.JobKey.key_hash == key_hash).limit(1))
    history = store.best_configs(s, kernel=kernel, key_hash=key_hash, device_classes=slugs, current=False)
    if key is None and not history:
        return None
    T = models.TuningTrial
    total, last = _count(s, kernel, key_hash, slugs, token)
    # the page's ids first, from ix_trials_key_order alone: asked for whole rows in id order,
    # PostgreSQL walks the primary key past every other key's trials to a late key's first
    page = _of_key(select(T.id), kernel, key_hash, slugs).order_by(T.id).limit(limit + 1)
    if after is not None:
        page = page.where(T.id > after)
    q = (select(T, models.DeviceClass.slug, models.StackFingerprint.hash)
         .join(models.DeviceClass, models.DeviceClass.id == T.device_class_id)
         .join(models.StackFingerprint, models.StackFingerprint.id == T.fingerprint_id)
         .where(T.id.in_(page.scalar_subquery())).order_by(T.id))
    rows = s.execute(q).all()
    trials = [_trial(t, slug, fp) for t, slug, fp in rows[:limit]]
    bests = [{"device_class": slug, "fingerprint": fp.hash,
              "stack": {k: getattr(fp, k) for k in ("driver", "runtime", "triton", "torch")},
              "config": b.config, "median_ms": b.median_ms, "default_ms": b.default_ms, "speedup": b.speedup,
              "trials": b.trials, "job": b.job_id, "created_at": b.created_at.isoformat(),
              "superseded_at": b.superseded_at.isoformat() if b.superseded_at else None}
             for b, slug, fp in history]
    key = key or history[0][0].key
    return {"kernel": kernel, "key_hash": key_hash, "key": key["dims"], "dtype": key["dtype"],
            "version": key.get("version"), "trials_total": total, "last_trial": last, "searching": token["searching"],
            "trials": trials, "next": trials[-1]["id"] if len(rows) > limit else None,
            "current": [b for b in bests if not b["superseded_at"]], "history": bests}


def _count(s, kernel: str, key_hash: str, slugs: list[str] | None, token: dict) -> tuple[int, int | None]:
    """(trials, the newest one's id) of the key on the classes: counted once while no job runs the
    key (tuner/settled.py), as counting a key of 100,000 took 30 ms of every read of its page."""
    T = models.TuningTrial

    def count() -> tuple[int, int | None]:
        return tuple(s.execute(_of_key(select(func.count(), func.max(T.id)), kernel, key_hash, slugs)).one())

    if token["open"]:
        return count()
    return settled.held((str(s.get_bind().url), "key", kernel, key_hash, tuple(slugs or ()), slugs is None,
                         token["newest"]), count)


def _of_key(q, kernel: str, key_hash: str, slugs: list[str] | None):
    """The key's trials (of the classes, when slugs): ix_trials_key_order holds them in the order
    stored, so a count and a page read the index, not 100,000 rows."""
    T = models.TuningTrial
    q = q.select_from(T).where(T.kernel == kernel, T.key_hash == key_hash)
    if slugs is None:
        return q
    return q.where(T.device_class_id.in_(select(models.DeviceClass.id).where(models.DeviceClass.slug.in_(slugs))))


def _trial(t, slug: str, fp: str, n: int | None = None) -> dict:
    return {"id": t.id, "n": n, "device_class": slug, "fingerprint": fp, "job": t.job_id, "status": t.status,
            "config": t.config, "median_ms": t.median_ms, "cv": t.cv, "message": t.message,
            "created_at": t.created_at.isoformat()}


def key_points(s, kernel: str, key_hash: str, slugs: list[str] | None, total: int, points: int = PLOT_POINTS) -> list[dict]:
    """The trials a plot of the key draws, `n` their place in the order stored: every measured or
    failed one up to `points`; beyond, per bucket of consecutive trials and per stack, its fastest
    ok trial and its fastest-failing one (a plot of 100,000 dots is 10 MB and shows no more)."""
    T = models.TuningTrial
    width = max(1, -(-total // max(1, points // 2)))
    ranked = (_of_key(select(T.id, (func.row_number().over(order_by=T.id) - 1).label("n")), kernel, key_hash, slugs)
              .subquery())
    picked = (select(ranked.c.id, ranked.c.n, func.row_number().over(
        partition_by=(ranked.c.n // width, T.device_class_id, T.fingerprint_id, T.status == "ok"),
        order_by=(T.median_ms, ranked.c.n)).label("pick"))
              .join(T, T.id == ranked.c.id).where(T.status != "invalid").subquery())
    q = (select(T, models.DeviceClass.slug, models.StackFingerprint.hash, picked.c.n)
         .join(picked, picked.c.id == T.id).join(models.DeviceClass, models.DeviceClass.id == T.device_class_id)
         .join(models.StackFingerprint, models.StackFingerprint.id == T.fingerprint_id)
         .where(picked.c.pick == 1).order_by(picked.c.n))
    return [_trial(t, slug, fp, n) for t, slug, fp, n in s.execute(q).all()]
