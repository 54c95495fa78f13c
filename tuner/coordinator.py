"""The coordinator: a request becomes a job row, key rows, and trial-batch messages on the queue
of the device class that must run them; `tuner retune` queues the retune jobs; status, jobs and
cancel read and end them. It needs the broker and the database only.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta

from sqlalchemy import func, select

from db import lifecycle, models, store
from db.clock import utcnow
from db.session import DatabaseError, session_scope
from db.urls import redact, scrub
from devices.classes import DeviceClass, matches, resolve_device_class
from devices.fit import host_memory
from search_spaces import registry
from keys import SpecError, TuningKey, config_hash
from tuner import settled
from tuner.db_open import open_for_read, open_for_write
from tuner.errors import Conflict, InvalidRequest, NotFound, Unavailable, UserError
from tuner.request import TuneRequest, check_fanout, refuse_unfit
from tuner.settings import Settings
from workers.job_request import JobRequest



def broker_app(settings: Settings, **options):
    """The Celery app on the configured broker, checked reachable (options: workers.app.make_app's)."""
    from db.session import private_dir, private_file, sqlite_path
    from workers.app import check_broker, make_app

    if settings.broker_url.startswith("sqla+sqlite:///"):
        path = sqlite_path(settings.broker_url[len("sqla+"):])
        if "TUNER_BROKER_URL" not in settings.extra["explicit"]:
            private_dir(settings.home)  # the embedded default broker lives in TUNER_HOME
        if path is not None and path.parent.is_dir():
            private_file(path)  # its messages name jobs and keys: the owner's only
    app = make_app(settings.broker_url, **options)
    try:
        check_broker(app)
    except ConnectionError as exc:
        raise Unavailable(f"cannot reach broker {redact(settings.broker_url)}: {scrub(exc, settings.broker_url)}; start it or set "
                        "TUNER_BROKER_URL") from None
    return app


def await_services(settings: Settings, limit_s: float | None, say=None, *, database: bool = True,
                   broker: bool = True) -> None:
    """Wait until the database and/or the broker answer, with back-off, telling `say` (default:
    stderr) once and then every minute (workers/faults.py); Unavailable, one line, after `limit_s`
    seconds (None: wait for ever). A long-lived process started during an outage waits for it
    instead of exiting. A fault that waiting cannot cure (a wrong password, a missing database)
    is Unavailable at once; the embedded SQLite defaults are never waited for."""
    from db.session import check_reachable, sqlite_path
    from workers.app import BrokerUnreachable, check_broker, make_app
    from workers.faults import StillDown, wait_for_service

    if limit_s is not None and not 0 <= limit_s < float("inf"):
        raise UserError(f"--wait-for-services {limit_s:g} is impossible: give the seconds to wait, e.g. 300, "
                        "or 0 to fail at once")
    app = make_app(settings.broker_url) if broker and not settings.broker_url.startswith("sqla+sqlite:") else None
    wait_db = database and sqlite_path(settings.db_url) is None

    def check() -> None:
        if wait_db:
            check_reachable(settings.db_url)
        if app is not None:
            try:
                check_broker(app)
            except BrokerUnreachable as exc:
                raise BrokerUnreachable(f"cannot reach broker {redact(settings.broker_url)}: {exc}; start it or "
                                        "set TUNER_BROKER_URL", exc.transient) from None

    try:
        wait_for_service(check, limit_s, say or _say)
    except (StillDown, DatabaseError, BrokerUnreachable) as exc:
        raise Unavailable(str(exc)) from None


def _say(line: str) -> None:
    print(f"tuner: {line}", file=sys.stderr, flush=True)


def submit(settings: Settings, req: TuneRequest, device_class: str, parallel: int, kind: str = "tune") -> str:
    """Queue the request for a device class; returns the job id. Checks broker and database
    before writing anything, and sends `parallel` batches per key so several workers cooperate."""
    from workers.app import send_batch
    from workers.batch import batch_message

    selector = resolve_device_class(device_class)
    (batches,) = check_fanout([req], parallel, settings.batch_trials)
    refuse_unfit(req, selector, f"device class {selector}", host_memory=host_memory())
    app = broker_app(settings)
    url = open_for_write(settings)
    request = req.job_request(batch_trials=settings.batch_trials)
    with session_scope(url) as s:
        job_id, key_ids = lifecycle.create_job(
            s, kind=kind, origin=lifecycle.QUEUED_ORIGIN, kernel=req.kernel, kernel_version=req.keys[0].version,
            keys=[k.to_json() for k in req.keys], key_hashes=[k.stable_hash for k in req.keys],
            sampler=req.sampler, seed=req.seed, budget_trials=req.trials, request=request.to_json(),
            device_selector=selector)
        job = s.get(models.Job, job_id)
        messages = [batch_message(job, s.get(models.JobKey, key_id)) for key_id in key_ids]
    try:
        for msg in messages:
            for _ in range(batches):
                send_batch(app, msg)
    except Exception as exc:
        with session_scope(url) as s:
            lifecycle.fail_job(s, job_id, f"could not queue: {scrub(exc, settings.broker_url)}")
        raise Unavailable(f"job {job_id} could not be queued on {redact(settings.broker_url)}: "
                          f"{scrub(exc, settings.broker_url)}") from None
    return job_id


def submit_all(settings: Settings, values: dict) -> list[str]:
    """`tuner submit`, POST /v1/jobs and the dashboard's form: the request fields' values
    (tuner/request_fields.py) checked, every job's fan-out too, then each job queued; the job ids."""
    from tuner.miss_intake import signed_request
    from tuner.request_fields import requests_from

    try:
        reqs = [signed_request(settings, req) for req in requests_from(values, settings.batch_trials)]
        selector = resolve_device_class(values["device_class"])
        for req in reqs:  # what no worker of the class could hold: refused before any job is queued
            refuse_unfit(req, selector, f"device class {selector}", host_memory=host_memory())
    except (UserError, SpecError) as exc:
        if isinstance(exc, (NotFound, Conflict, Unavailable)):
            raise
        raise InvalidRequest(str(exc)) from None
    return [submit(settings, req, values["device_class"], values["parallel"]) for req in reqs]


def retune_plumbing(settings: Settings, device_class: str | None, dry_run: bool, holder: str | None):
    """What a retune run needs from the CLI: (class filter, database URL, send, lease holder). The
    broker is checked before anything is written; a dry run needs neither broker nor writes."""
    match = None
    if device_class is not None:
        selector = resolve_device_class(device_class)
        match = lambda slug: matches(selector, slug)  # noqa: E731
    send = None
    if dry_run:
        url = open_for_read(settings)
    else:
        from workers.app import send_batch

        app = broker_app(settings)
        url = open_for_write(settings)
        send = lambda msg: send_batch(app, msg)  # noqa: E731
    return match, url, send, holder or f"cli-{socket.gethostname()}-{os.getpid()}"


def retune(settings: Settings, device_class: str | None, kernel: str | None, stale_only: bool,
           dry_run: bool, holder: str | None = None) -> dict:
    """Queue warm-started retune jobs for the keys whose stack changed (workers/stale_jobs.py)."""
    from workers.stale_jobs import enqueue_stale

    match, url, send, holder = retune_plumbing(settings, device_class, dry_run, holder)
    return enqueue_stale(url, send, holder=holder,
                         dead_after_s=settings.worker_dead_after_s,
                         budget_fraction=settings.retune_budget_fraction, device_class=match, kernel=kernel,
                         stale_only=stale_only, dry_run=dry_run, batch_trials=settings.batch_trials,
                         parallel=settings.retune_parallel)


def cancel(settings: Settings, job_id: str) -> str:
    """Cancel a queued or running job: one conditional UPDATE, so a job that a worker ends meanwhile
    keeps its end (`done` is never overwritten). Cancelling a cancelled job is harmless (returns
    "cancelled" again); Conflict (a UserError: exit 2, HTTP 409) when it ended otherwise."""
    url = open_for_read(settings)
    with session_scope(url) as s:
        job = _job(s, job_id)
        state = lifecycle.cancel_job(s, job.id)
        if state != lifecycle.CANCELLED:
            raise Conflict(f"job {job.id} has already ended ({state}); nothing to cancel")
    return state


def _job(s, job_id: str) -> models.Job:
    job = s.get(models.Job, job_id)
    if job is None:
        matches = s.scalars(select(models.Job).where(models.Job.id.like(f"{job_id}%"))).all() if len(job_id) >= 6 else []
        if len(matches) != 1:
            raise NotFound(f"no job {job_id[:80]!r}; `tuner jobs` lists them")
        job = matches[0]
    return job


def live_workers(s, selector: str, dead_after_s: float) -> list[models.Worker]:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    rows = s.execute(select(models.Worker, models.DeviceClass.slug)
                     .join(models.DeviceClass, models.DeviceClass.id == models.Worker.device_class_id)
                     .where(models.Worker.stopped_at.is_(None), models.Worker.heartbeat_at >= cutoff)).all()
    return [w for w, slug in rows if matches(selector, slug)]


def status(settings: Settings, job_id: str) -> dict:
    url = open_for_read(settings)
    with session_scope(url) as s:
        job = _job(s, job_id)
        keys = s.scalars(select(models.JobKey).where(models.JobKey.job_id == job.id).order_by(models.JobKey.id)).all()
        if job.state in lifecycle.END_STATES and all(k.state in settled.SETTLED for k in keys):
            # an ended job's keys, built once per state of what they read (tuner/settled.py)
            out_keys = settled.held((str(s.get_bind().url), "job", job.id, job.state,
                                     tuple(k.state for k in keys), _ended_job_token(s, job, keys)),
                                    lambda: [_key_status(s, job, k) for k in keys])
        else:
            out_keys = [_key_status(s, job, k) for k in keys]
        alive = live_workers(s, job.device_selector or "", settings.worker_dead_after_s) if job.device_selector else []
        note = None
        if job.state not in lifecycle.END_STATES and job.origin == lifecycle.QUEUED_ORIGIN and not alive:
            note = f"no worker of class {job.device_selector} is alive; start one with `tuner worker --device ...`"
        return {"job": job.id, "kind": job.kind, "kernel": job.kernel, "state": job.state,
                "device_class": job.device_selector, "sampler": job.sampler, "budget_trials": job.budget_trials,
                "measurement": JobRequest.of(job).measurement.to_json(),
                "created_at": job.created_at.isoformat(), "finished_at": job.finished_at.isoformat() if job.finished_at else None,
                "error": job.error, "live_workers": [w.name for w in alive], "note": note, "keys": out_keys}


def _ended_job_token(s, job: models.Job, keys) -> tuple:
    """What an ended job's keys read besides their own rows, in one statement: each key's newest
    trial (a straggler of a cancelled batch may come later), the workers (pruning one empties its
    trials' worker_id; SQLite gives a newcomer a deleted row's id) and the key's best rows (a best is
    superseded by a newer row: highest id and count change whenever its stored result can). The
    five to eight statements per key it replaces were 8 ms of every read of a job at fleet scale."""
    T, W = models.TuningTrial, models.Worker
    return tuple(s.execute(select(
        *(select(func.max(T.id)).where(T.job_key_id == k.id).scalar_subquery() for k in keys),
        select(func.count(W.id)).scalar_subquery(), select(func.max(W.started_at)).scalar_subquery(),
        *store.best_rows_mark(kernel=job.kernel, key_hashes=[k.key_hash for k in keys]))).one())


# what a trial's status counts as in a job's progress: every trial run is one of these
OUTCOMES = {"ok": "ok", "invalid": "invalid", "timeout": "timeout", "compile_error": "failed",
            "out_of_resources": "failed", "wrong_result": "failed", "crashed": "failed"}


def _key_status(s, job: models.Job, k: models.JobKey) -> dict:
    """One key of a job: progress by outcome, the search's best so far and, once the key is done,
    its stored result (what the final re-measurement decided, which may differ from the best so far)."""
    from workers.batch import key_budget

    if k.state in settled.SETTLED:  # its trials are grouped once, not at every read (tuner/settled.py)
        T, W = models.TuningTrial, models.Worker
        newest = s.scalar(select(func.max(T.id)).where(T.job_key_id == k.id))
        # pruning a worker empties its trials' worker_id, and SQLite gives the next worker the id
        # of a deleted last one: the tally's workers stand while no worker went or came
        workers = tuple(s.execute(select(func.count(W.id), func.max(W.started_at))).one())
        tally = settled.held((str(s.get_bind().url), "job key", job.id, k.id, newest, workers),
                             lambda: _tally(s, job, k))
    else:
        tally = _tally(s, job, k)
    outcomes, classes, worker_ids, best, default = dict(tally[0]), *tally[1:]
    ran = sum(outcomes.values())
    names = s.scalars(select(models.Worker.name).where(models.Worker.id.in_(worker_ids - {None})))
    return {
        "key": k.key["dims"], "dtype": k.key["dtype"], "key_hash": k.key_hash, "state": _key_state(job, k),
        # the budget counts every trial run but those check() refused (they cost nothing to run)
        "trials_done": ran - outcomes["invalid"], "trials_run": ran, "outcomes": outcomes,
        "budget": key_budget(job, k.key_hash),
        "failed_trials": outcomes["failed"] + outcomes["timeout"],
        "best_ms_so_far": best.median_ms if best else None, "best_config_so_far": best.config if best else None,
        "default_ms_so_far": min((d for d in default if d is not None), default=None),
        "result": _stored_result(s, job, k, set(classes)) if k.state == lifecycle.DONE else None,
        "workers": sorted(names),
    }


def _tally(s, job: models.Job, k: models.JobKey) -> tuple:
    """A job key's trials: (runs by outcome, classes with a correct run, workers, the fastest
    correct (config, median_ms), the default configuration's time per class). Aggregates in SQL,
    read from ix_trials_progress: a key of a long search holds 100,000 trials, which a page must
    not load."""
    T = models.TuningTrial
    of_key = T.job_key_id == k.id
    outcomes = dict.fromkeys(("ok", "invalid", "failed", "timeout"), 0)
    classes, worker_ids = set(), set()
    for status, dc, worker, n in s.execute(select(T.status, T.device_class_id, T.worker_id, func.count())
                                           .where(of_key).group_by(T.status, T.device_class_id, T.worker_id)).all():
        outcomes[OUTCOMES.get(status, "failed")] += n
        classes |= {dc} if status == "ok" else set()
        worker_ids.add(worker)
    best = s.execute(select(T.config, T.median_ms).where(of_key, T.status == "ok", T.median_ms.is_not(None))
                     .order_by(T.median_ms).limit(1)).first()
    default = [s.scalar(select(func.min(T.median_ms)).where(of_key, T.status == "ok", T.device_class_id == c,
                                                              T.config_hash == h))
               for c, h in ((c, _default_hash(s, job.kernel, k.key, c)) for c in sorted(classes)) if h is not None]
    return outcomes, frozenset(classes), frozenset(worker_ids), best, default


def _key_state(job: models.Job, k: models.JobKey) -> str:
    """A key's own row says running from the job's creation on; until a worker takes the job, and
    once it is cancelled, the job's state is the key's too."""
    if job.state == lifecycle.QUEUED or (job.state == lifecycle.CANCELLED and k.state not in lifecycle.KEY_END_STATES):
        return job.state
    return k.state


def _stored_result(s, job: models.Job, k: models.JobKey, class_ids: set[int]) -> dict | None:
    """What the key's final re-measurement stored: the best this job wrote (`changed`), or else the
    current best it kept; None when no configuration ran correctly."""
    q = select(models.BestConfig).where(models.BestConfig.kernel == job.kernel,
                                        models.BestConfig.kernel_version == job.kernel_version,
                                        models.BestConfig.key_hash == k.key_hash)
    row = s.scalars(q.where(models.BestConfig.job_id == job.id).order_by(models.BestConfig.id.desc())).first()
    changed = row is not None
    if row is None and class_ids:
        row = s.scalars(q.where(models.BestConfig.superseded_at.is_(None),
                                models.BestConfig.device_class_id.in_(class_ids))
                        .order_by(models.BestConfig.created_at.desc())).first()
    if row is None:
        return None
    return {"config": row.config, "median_ms": row.median_ms, "default_ms": row.default_ms,
            "speedup": row.speedup, "changed": changed, "current": row.superseded_at is None,
            "best_id": row.id}


def _default_hash(s, kernel: str, key: dict, device_class_id: int) -> str | None:
    """The config hash of the kernel's default for the key on a stored class, to find its trial
    (the `auto` strategy measures it first); None where this process cannot say."""
    try:
        row = s.get(models.DeviceClass, device_class_id)
        target = DeviceClass(row.vendor, row.arch, row.name, row.compute_units, row.memory_gb, row.slug).target
        return config_hash(registry.get(kernel).default(TuningKey.from_json(key), target))
    except Exception:  # a kernel not registered here, an architecture it has no default for
        return None


def jobs(settings: Settings, limit: int = 50, state: str | None = None, kernel: str | None = None,
         device_class: str | None = None) -> list[dict]:
    """The newest jobs, of a state, kernel and device class when given (the class as the job named
    it, a family like h100, or the exact class it ran on)."""
    if state and state not in lifecycle.JOB_STATES:
        raise UserError(f"unknown job state {state[:40]!r}; one of {', '.join(lifecycle.JOB_STATES)}")
    url = open_for_read(settings)
    with session_scope(url) as s:
        q = select(models.Job)
        if state:
            q = q.where(models.Job.state == state)
        if kernel:
            q = q.where(models.Job.kernel == kernel)
        if device_class:
            slug = select(models.DeviceClass.id).where(models.DeviceClass.slug == device_class).scalar_subquery()
            q = q.where((models.Job.device_selector == device_class) | (models.Job.device_class_id == slug))
        rows = s.execute(q.order_by(models.Job.created_at.desc()).limit(limit)).scalars().all()
        counts = dict(s.execute(select(models.TuningTrial.job_id, func.count())
                                .where(models.TuningTrial.status != "invalid",
                                       models.TuningTrial.job_id.in_([j.id for j in rows]))
                                .group_by(models.TuningTrial.job_id)).all())
        return [{"job": j.id, "kind": j.kind, "origin": j.origin, "kernel": j.kernel, "state": j.state,
                 "device_class": j.device_selector or "", "trials": counts.get(j.id, 0),
                 "budget_per_key": j.budget_trials, "keys": len(JobRequest.of(j).keys),
                 "created_at": j.created_at.isoformat()} for j in rows]


def wait(settings: Settings, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0, on_poll=None) -> dict:
    start = time.monotonic()
    while True:
        st = status(settings, job_id)
        if on_poll:
            on_poll(st)
        if st["state"] in lifecycle.END_STATES:
            return st
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return st
        time.sleep(poll_s)
