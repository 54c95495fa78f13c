"""The Optuna storage of the key studies: its schema, opened with Optuna's heartbeat, and the
recovery of trials whose worker died or stopped.

Schema: `tuner db upgrade` (and the embedded SQLite default on first use) creates and upgrades
Optuna's tables beside ours (`upgrade_storage`); a worker only opens them (`storage`, which
refuses a database without them), so workers that start together never race to create them.

A trial in flight is RUNNING in Optuna and claimed in `trial_claims` (db/store.py); its process
records Optuna's heartbeat for it (`Heartbeats`), from before the claim until it is told.
`recover(study)` ends every RUNNING trial that nobody will tell:
  - its result is stored (the worker died between storing and telling): it is told that result,
    so storing and telling are one step that anyone can finish;
  - its heartbeat is older than the grace period (the worker died, or was stopped): Optuna's
    `fail_stale_trials` fails it, and the callback releases its claim and re-enqueues its
    configuration (Optuna's `RetryHeartbeatStaleTrialCallback`), so it is proposed again;
  - it was never claimed and began longer ago than the grace period (the worker died between
    asking and claiming): it is failed.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
from datetime import datetime, timedelta

import optuna
from sqlalchemy import func, select, text

from db import models, store
from db.models import OPTUNA_TABLES
from db.session import DatabaseError, make_engine, missing_tables, schema_lock, session_scope
from db.urls import redact
from search.propose import tell

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Optuna's heartbeat is marked experimental, and ask() warns that it was meant for optimize(): we
# record it ourselves for the trials we ask for, which is what optimize() does for its own
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

MAX_RETRY = 2  # times a configuration whose worker died is enqueued again


SQLITE_WAIT_S = 30  # how long a write waits for another process's write to the embedded file


def _engine_kwargs(db_url: str) -> dict:
    return {"connect_args": {"timeout": SQLITE_WAIT_S}} if db_url.startswith("sqlite") else {"pool_pre_ping": True}


def _waiting_url(db_url: str) -> str:
    """The URL with the SQLite wait in it: Optuna's schema upgrade runs through Alembic on an engine
    made from the URL alone (optuna/storages/_rdb/storage.py, _VersionManager._create_alembic_config),
    never with our engine arguments, and failed after sqlite3's default 5 s while another process
    wrote the file. SQLAlchemy's pysqlite dialect reads `timeout` from the query string."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or "timeout" in url.query:
        return db_url
    return url.update_query_dict({"timeout": str(SQLITE_WAIT_S)}).render_as_string(hide_password=False)


def upgrade_storage(db_url: str) -> None:
    """Create Optuna's tables in the database, or upgrade them to this Optuna's schema: done once by
    `tuner db upgrade` (or the embedded default's first use), under a lock that a concurrent
    upgrade waits for."""
    with schema_lock(db_url):
        # an engine for one check and upgrade, disposed at once: no pooled connection to pre-ping, and
        # Optuna's Alembic makes its own from the URL alone, so the SQLite wait rides in the URL
        st = optuna.storages.RDBStorage(_waiting_url(db_url), skip_compatibility_check=True)
        try:
            if st.get_current_version() != st.get_head_version():
                st.upgrade()
        finally:
            st.engine.dispose()


@functools.lru_cache(maxsize=8)
def storage(db_url: str, heartbeat_s: float, grace_s: float) -> optuna.storages.RDBStorage:
    """The studies' storage, opened once per database and process (one connection pool: a worker
    opens a study per batch, and a new pool each time would leak connections until PostgreSQL
    refuses more). It never creates a table: DatabaseError when `tuner db upgrade` has not run."""
    missing = missing_tables(db_url, OPTUNA_TABLES)
    if missing:
        raise DatabaseError(f"database {redact(db_url)} has no Optuna tables ({', '.join(missing)}): "
                            "run `tuner db upgrade`")
    interval = max(1, round(heartbeat_s))
    try:
        return optuna.storages.RDBStorage(
            db_url, engine_kwargs=_engine_kwargs(db_url), skip_table_creation=True,
            heartbeat_interval=interval, grace_period=max(2 * interval, round(grace_s)),
            heartbeat_stale_trial_callback=functools.partial(_stale, db_url))
    except RuntimeError as exc:  # Optuna's schema is older than this Optuna
        raise DatabaseError(f"database {redact(db_url)}: {str(exc).splitlines()[0][:200]} Run `tuner db upgrade`.") from exc


def _stale(db_url: str, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna failed a trial whose heartbeat stopped: its configuration is free again, and is
    enqueued again (at most MAX_RETRY times)."""
    with session_scope(db_url) as s:
        store.release_claims(s, study.study_name, [trial.number])
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
    log.warning("trial %d of study %s: its worker stopped; failed and enqueued again", trial.number, study.study_name)


def trial_id(trial: optuna.Trial) -> int:
    """Optuna's id of a live trial, which its heartbeat is recorded under."""
    return trial._trial_id


class Heartbeats:
    """Optuna's heartbeat of the trials this process has in flight, recorded at once when one is
    added (before it is claimed) and then every interval from a thread, until it is discarded."""

    def __init__(self, st: optuna.storages.RDBStorage):
        self.st, self.interval = st, st.get_heartbeat_interval()
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuner-trial-heartbeat", daemon=True)

    def add(self, trial: optuna.Trial) -> None:
        if self.interval is None:
            return
        self.st.record_heartbeat(trial_id(trial))
        with self._lock:
            self._ids.add(trial_id(trial))

    def discard(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._ids.discard(trial_id(trial))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._ids)
            for tid in ids:
                try:
                    self.st.record_heartbeat(tid)
                except Exception as exc:  # a database blip: the next beat tries again
                    log.warning("heartbeat of trial %d failed: %s", tid, str(exc).splitlines()[0][:200])

    def __enter__(self) -> "Heartbeats":
        if self.interval is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def recover(study: optuna.Study, db_url: str, grace_s: float) -> int:
    """End the RUNNING trials of the study that nobody will tell (see the module's docstring);
    returns how many were told a stored result or failed here (Optuna's stale ones not counted)."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ended = 0
    if running:
        numbers = [t.number for t in running]
        with session_scope(db_url) as s:
            claims = s.execute(select(models.TrialClaim.trial_number, models.TuningTrial.status,
                                      models.TuningTrial.median_ms)
                               .outerjoin(models.TuningTrial, models.TuningTrial.id == models.TrialClaim.trial_row_id)
                               .where(models.TrialClaim.study_name == study.study_name,
                                      models.TrialClaim.trial_number.in_(numbers))).all()
        claimed = {n: (status, median) for n, status, median in claims}
        started_before = datetime.now() - timedelta(seconds=grace_s)  # Optuna's clock: naive, local
        for t in running:
            status, median = claimed.get(t.number, (None, None))
            if status is not None:
                tell(study, t.number, median if status == "ok" else None)
            elif t.number not in claimed and t.datetime_start is not None and t.datetime_start < started_before:
                tell(study, t.number)
            else:
                continue
            ended += 1
    optuna.storages.fail_stale_trials(study)
    return ended


_recovered: dict[tuple[str, str], float] = {}


def recover_now(study: optuna.Study, db_url: str, grace_s: float) -> int:
    """`recover`, at most once per grace period per study in this process: a worker calls it at
    every batch, and nothing it ends can be younger (the janitor sweeps every study besides)."""
    key, now = (db_url, study.study_name), time.monotonic()
    if now - _recovered.get(key, float("-inf")) < grace_s:
        return 0
    _recovered[key] = now
    return recover(study, db_url, grace_s)


def suspect_studies(db_url: str, grace_s: float) -> list[str]:
    """Studies with a RUNNING trial that may need `recover`: one whose heartbeat is older than the
    grace period or missing, or whose result is stored. Read from Optuna's tables in one query, so
    the janitor loads only those studies."""
    sql = text("SELECT s.study_name, t.number, h.heartbeat, c.trial_row_id FROM trials t "
               "JOIN studies s ON s.study_id = t.study_id "
               "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
               "LEFT JOIN trial_claims c ON c.study_name = s.study_name AND c.trial_number = t.number "
               "WHERE t.state = 'RUNNING'")
    with make_engine(db_url).connect() as conn:
        rows = conn.execute(sql).all()
        if not rows:
            return []
        now = conn.execute(select(func.now())).scalar()
    now = (datetime.fromisoformat(now) if isinstance(now, str) else now).replace(tzinfo=None)
    cutoff = now - timedelta(seconds=grace_s)
    out = set()
    for name, _, beat, stored in rows:
        beat = datetime.fromisoformat(beat) if isinstance(beat, str) else beat
        if stored is not None or beat is None or beat.replace(tzinfo=None) < cutoff:
            out.add(name)
    return sorted(out)


def recover_all(db_url: str, heartbeat_s: float, grace_s: float) -> int:
    """`recover` every suspect study (the janitor's sweep), so no trial of a dead worker stays
    RUNNING, even in a study whose key has ended."""
    ended = 0
    for name in suspect_studies(db_url, grace_s):
        try:
            study = optuna.load_study(study_name=name, storage=storage(db_url, heartbeat_s, grace_s))
        except KeyError:
            continue
        ended += recover(study, db_url, grace_s)
    return ended
