"""search/studies.py in one process on a SQLite file (and PostgreSQL where the SQL differs): the
storage's settings, the recovery of RUNNING trials nobody will tell, which studies the janitor
loads, the heartbeat thread and the stale-trial callback. Written against the survivors of
bench/mutation.py: each assertion holds a behaviour a mutant changed while every test passed."""
from __future__ import annotations

import contextlib
import logging

import optuna
import pytest
from sqlalchemy import text

from db import models, store
from db.session import DatabaseError, make_engine, session_scope, upgrade
from search import studies
from tests.services import wait_for

RUNNING, COMPLETE, FAIL = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
                           optuna.trial.TrialState.FAIL)


@pytest.fixture
def url(tmp_path):
    u = f"sqlite:///{tmp_path}/t.db"
    upgrade(u)
    studies.upgrade_storage(u)
    return u


def _identity(url):
    from devices.classes import CPU_INTERPRETER

    with session_scope(url) as s:
        return store.store_identity(s, CPU_INTERPRETER.to_json(), {"hash": "f" * 16, "driver": "none",
                                                                  "runtime": "none", "triton": "3.6.0", "torch": "2.13.0"})


def _claim(url, study, number, config_hash):
    with session_scope(url) as s:
        assert store.claim_config(s, study_name=study, config_hash=config_hash, trial_number=number,
                                  job_key_id=None, worker_id=None)


def _stored(url, study, number, status, median, config_hash):
    """The trial's claim, filled with its measured row (the worker died before telling)."""
    dc, fp = _identity(url)
    _claim(url, study, number, config_hash)
    with session_scope(url) as s:
        assert store.record_claimed_trial(s, optuna_number=number, kernel="tiles", key_hash="k" * 16,
                                          device_class_id=dc, fingerprint_id=fp, study_name=study,
                                          config={"BLOCK": 16}, config_hash=config_hash, status=status,
                                          median_ms=median) is not None


def _state(study, number):
    return study.trials[number].state


def test_engine_settings_per_database():
    assert studies._engine_kwargs("sqlite:///x.db") == {"connect_args": {"timeout": 30}}
    assert studies._engine_kwargs("postgresql+psycopg://u@h/d") == {"pool_pre_ping": True}


def test_storage_refuses_a_database_without_optuna_tables_and_rounds_its_heartbeat(tmp_path, url):
    bare = f"sqlite:///{tmp_path}/bare.db"
    upgrade(bare)
    with pytest.raises(DatabaseError) as err:
        studies.storage(bare, 10, 60)
    assert str(err.value).startswith(f"database {bare} has no Optuna tables (")
    assert str(err.value).endswith("): run `tuner db upgrade`")
    st = studies.storage(url, 3.4, 1.0)
    assert (st.heartbeat_interval, st.grace_period) == (3, 6)  # grace at least two beats
    st2 = studies.storage(url, 0.2, 100.4)
    assert (st2.heartbeat_interval, st2.grace_period) == (1, 100)  # a beat at least every second
    callback = st2.heartbeat_stale_trial_callback
    assert (callback.func, callback.args) == (studies._stale, (url,))
    assert studies.storage(url, 0.2, 100.4) is st2  # one pool per database and settings


def test_storage_of_an_older_optuna_schema_says_to_upgrade(tmp_path):
    old = f"sqlite:///{tmp_path}/old.db"
    upgrade(old)
    studies.upgrade_storage(old)
    with make_engine(old).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'v3.0.0.a'"))
    with pytest.raises(DatabaseError) as err:
        studies.storage(old, 10, 60)
    assert str(err.value).startswith(f"database {old}: ")
    assert str(err.value).endswith(" Run `tuner db upgrade`.") and "\n" not in str(err.value)


def test_upgrade_storage_brings_an_older_optuna_schema_to_this_optunas(tmp_path):
    """A database of the Optuna before this one's last revision (its index on trials.study_id not
    yet made) is refused by storage() until upgrade_storage() has upgraded it."""
    old = f"sqlite:///{tmp_path}/old.db"
    upgrade(old)
    studies.upgrade_storage(old)
    with make_engine(old).begin() as conn:
        conn.execute(text("DROP INDEX ix_trials_study_id"))
        conn.execute(text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    with pytest.raises(DatabaseError):
        studies.storage(old, 10, 60)
    studies.upgrade_storage(old)
    st = studies.storage(old, 10, 60)
    assert st.get_current_version() == st.get_head_version() == "v3.2.0.a"
    with make_engine(old).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'trials'")
                            ).scalar() == 1  # made again
    st.engine.dispose()


@contextlib.contextmanager
def another_writer(path, lock: str, hold_s: float = 8.0):
    """Another process's write transaction on the SQLite file (BEGIN `lock`), held for hold_s from
    the block's start: longer than sqlite3's default wait of 5 s, shorter than ours."""
    import sqlite3
    import threading
    import time

    held = threading.Event()

    def writer():
        c = sqlite3.connect(path, isolation_level=None)
        c.execute(f"BEGIN {lock}")
        held.set()
        time.sleep(hold_s)
        c.execute("COMMIT")
        c.close()
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert held.wait(30)
    yield
    thread.join(30)


def test_upgrade_storage_waits_for_a_writer_that_holds_the_database(tmp_path):
    """Another process writing the SQLite file for longer than sqlite3's default wait of 5 s while
    Optuna's tables are first made: their creation waits for it (30 s) instead of failing with
    "database is locked"."""
    old = f"sqlite:///{tmp_path}/old.db"
    upgrade(old)  # tuner's tables only
    with another_writer(tmp_path / "old.db", "EXCLUSIVE"):
        studies.upgrade_storage(old)
    st = studies.storage(old, 10, 60)
    assert st.get_current_version() == st.get_head_version()
    st.engine.dispose()


def test_the_sqlite_wait_rides_in_the_url_unless_the_user_gave_one(tmp_path):
    """Optuna's Alembic upgrade opens its engine from the URL alone: the wait is put there, but a
    timeout the user wrote in the URL is theirs to keep, and another database's URL is left alone."""
    mine = f"sqlite:///{tmp_path}/a.db"
    assert studies._waiting_url(mine) == f"{mine}?timeout={studies.SQLITE_WAIT_S}"
    assert studies._waiting_url(f"{mine}?timeout=2") == f"{mine}?timeout=2"
    pg = "postgresql+psycopg://u:secret@h/d"
    assert studies._waiting_url(pg) == pg


def test_upgrading_an_older_optuna_schema_waits_for_a_writer_that_holds_the_database(tmp_path):
    """Optuna runs its schema upgrade through Alembic on an engine of its own, made from the URL
    alone (optuna/storages/_rdb/storage.py, _VersionManager._create_alembic_config): the 30 s wait
    given to RDBStorage's engine never reached it, and an upgrade while another process wrote the
    file failed after sqlite3's default 5 s with "database is locked". A writer holding its RESERVED
    lock (readers go on, writers wait) for 8 s is now waited for."""
    old = f"sqlite:///{tmp_path}/old.db"
    upgrade(old)
    studies.upgrade_storage(old)
    with make_engine(old).begin() as conn:  # as an older Optuna left it: its last revision to run
        conn.execute(text("DROP INDEX ix_trials_study_id"))
        conn.execute(text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    with another_writer(tmp_path / "old.db", "IMMEDIATE"):
        studies.upgrade_storage(old)
    st = studies.storage(old, 10, 60)
    assert st.get_current_version() == st.get_head_version() == "v3.2.0.a"
    st.engine.dispose()


def test_recover_tells_stored_results_and_fails_trials_never_claimed_once_past_the_grace(url):
    st = studies.storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name="s1", storage=st)
    ok, bad, held, young = (study.ask() for _ in range(4))
    _stored(url, "s1", ok.number, "ok", 2.5, "c-ok")
    _stored(url, "s1", bad.number, "mismatch", 3.0, "c-bad")  # timed, but its output was wrong: failed
    _claim(url, "s1", held.number, "c-held")
    _stored(url, "other", young.number, "ok", 9.0, "c-other")  # another study's claim of the same number
    assert studies.recover(study, url, grace_s=3600) == 2
    assert (_state(study, ok.number), study.trials[ok.number].value) == (COMPLETE, 2.5)
    assert _state(study, bad.number) == FAIL
    assert (_state(study, held.number), _state(study, young.number)) == (RUNNING, RUNNING)
    assert studies.recover(study, url, grace_s=0) == 1  # the unclaimed one is now past the grace
    assert (_state(study, held.number), _state(study, young.number)) == (RUNNING, FAIL)
    st.engine.dispose()


def test_recover_now_runs_once_per_grace_period_per_study(url):
    st = studies.storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name="s1", storage=st)
    first = study.ask()
    _stored(url, "s1", first.number, "ok", 1.0, "c1")
    assert studies.recover_now(study, url, grace_s=3600) == 1
    second = study.ask()
    _stored(url, "s1", second.number, "ok", 1.0, "c2")
    assert studies.recover_now(study, url, grace_s=3600) == 0
    assert _state(study, second.number) == RUNNING
    assert studies.recover_now(study, url, grace_s=0) == 1  # a period of 0 s has passed
    st.engine.dispose()


def test_suspect_studies_are_those_with_a_stale_missing_or_stored_trial(db_url):
    upgrade(db_url)
    studies.upgrade_storage(db_url)
    assert studies.suspect_studies(db_url, 3600) == []
    st = studies.storage(db_url, heartbeat_s=1, grace_s=2)
    beating, silent, stored, done = (optuna.create_study(study_name=n, storage=st) for n in "abcd")
    st.record_heartbeat(studies.trial_id(beating.ask()))
    silent.ask()
    t = stored.ask()
    st.record_heartbeat(studies.trial_id(t))
    _stored(db_url, "c", t.number, "ok", 1.0, "c1")
    done.tell(done.ask(), 1.0)
    assert studies.suspect_studies(db_url, 3600) == ["b", "c"]
    assert studies.suspect_studies(db_url, -3600) == ["a", "b", "c"]  # a beat older than an hour from now
    st.engine.dispose()


def test_recover_all_recovers_every_suspect_study(url):
    st = studies.storage(url, heartbeat_s=1, grace_s=3600)
    a, b = (optuna.create_study(study_name=n, storage=st) for n in "ab")
    ta, tb = a.ask(), b.ask()
    _stored(url, "a", ta.number, "ok", 1.0, "c1")
    _stored(url, "b", tb.number, "ok", 2.0, "c1")
    assert studies.recover_all(url, 1, 3600) == 2
    assert (a.trials[0].value, b.trials[0].value) == (1.0, 2.0)
    st.engine.dispose()


def test_a_stale_trial_is_released_and_enqueued_again_at_most_twice(url, caplog):
    st = studies.storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name="s1", storage=st)
    numbers = []
    for attempt in range(3):
        trial = study.ask()
        trial.suggest_categorical("P", [1, 2, 3])
        numbers.append(trial.number)
        _claim(url, "s1", trial.number, f"c{attempt}")
        with caplog.at_level(logging.WARNING, logger="search.studies"):
            study.tell(trial, state=FAIL)
            studies._stale(url, study, study.trials[trial.number])
        assert caplog.records[-1].getMessage() == \
            f"trial {trial.number} of study s1: its worker stopped; failed and enqueued again"
        with session_scope(url) as s:
            assert s.query(models.TrialClaim).filter_by(trial_number=trial.number).count() == 0
    first = study.trials[numbers[0]].params
    assert [study.trials[n].params for n in numbers] == [first] * 3  # the same configuration again, twice
    assert [t.state for t in study.trials] == [FAIL] * 3  # and not a third time (MAX_RETRY 2)
    st.engine.dispose()


def test_heartbeats_beat_at_once_then_every_interval_until_discarded(url):
    st = studies.storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name="s1", storage=st)
    trial = study.ask()

    def beat():
        with make_engine(url).connect() as conn:
            return conn.execute(text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t"),
                                {"t": studies.trial_id(trial)}).scalar()

    hb = studies.Heartbeats(st)
    assert hb.interval == 1
    # named in thread dumps, and never what keeps a finished worker's process alive
    assert (hb._thread.name, hb._thread.daemon) == ("tuner-trial-heartbeat", True)
    hb.add(trial)
    first = beat()
    assert first is not None  # recorded at once, before any claim
    with hb:
        wait_for(lambda: beat() != first, 10, "a second heartbeat", poll_s=0.2)  # beats 1 s apart
        hb.discard(trial)
        assert studies.trial_id(trial) not in hb._ids
    assert not hb._thread.is_alive()
    quiet = studies.Heartbeats(optuna.storages.RDBStorage(url, skip_table_creation=True))
    assert quiet.interval is None
    with quiet:
        quiet.add(study.ask())  # a storage without a heartbeat: nothing recorded, no thread
        assert not quiet._thread.is_alive()
    with make_engine(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM trial_heartbeats")).scalar() == 1
    st.engine.dispose()


def test_recover_all_fails_a_trial_whose_heartbeat_stopped_within_the_grace_it_is_given(url):
    """The janitor's sweep opens the storage with its own heartbeat and grace: a trial whose
    worker beat once and died is failed (and enqueued again) about 2 s later, not after the
    60 s default grace."""
    st = studies.storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name="s1", storage=st)
    dead = study.ask()
    st.record_heartbeat(studies.trial_id(dead))
    _claim(url, "s1", dead.number, "c1")  # claimed: only its heartbeat says it is dead

    def failed():
        assert studies.recover_all(url, 1, 2) == 0  # Optuna's stale trials are not counted
        return _state(study, dead.number) == FAIL
    wait_for(failed, 30, "the dead trial to be failed", poll_s=0.5)
    assert [t.state for t in study.trials][1:] == [optuna.trial.TrialState.WAITING]  # enqueued again
    with session_scope(url) as s:
        assert s.query(models.TrialClaim).count() == 0  # released
    st.engine.dispose()


def test_a_heartbeat_that_fails_is_logged_in_one_line_and_tried_again(url, caplog):
    st = studies.storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name="s1", storage=st)
    trial = study.ask()
    hb = studies.Heartbeats(st)
    hb.add(trial)
    with make_engine(url).begin() as conn:
        conn.execute(text("DROP TABLE trial_heartbeats"))  # every beat from now on fails

    def failures():
        return [r.getMessage() for r in caplog.records if r.name == "search.studies"]
    with caplog.at_level(logging.WARNING, logger="search.studies"), hb:
        wait_for(lambda: len(failures()) >= 2, 10, "two failed beats", poll_s=0.2)
    with pytest.raises(Exception) as err:  # what the storage raises, for the expected line
        st.record_heartbeat(studies.trial_id(trial))
    first = str(err.value).splitlines()[0]
    assert 0 < len(first) <= 200
    assert set(failures()) == {f"heartbeat of trial {studies.trial_id(trial)} failed: {first}"}
    st.engine.dispose()


def test_a_failed_beat_logs_the_first_200_characters_of_the_error_s_first_line(caplog):
    """A database error's first line can be long (a whole statement): the log line keeps 200 characters of it."""
    from types import SimpleNamespace

    class FailsAfterTheFirstBeat:
        beats = 0

        def get_heartbeat_interval(self):
            return 0.01

        def record_heartbeat(self, tid):
            self.beats += 1
            if self.beats > 1:
                raise RuntimeError("a" * 199 + "bc" + "d" * 100 + "\nthe second line")

    hb = studies.Heartbeats(FailsAfterTheFirstBeat())
    hb.add(SimpleNamespace(_trial_id=7))

    def failures():
        return [r.getMessage() for r in caplog.records if r.name == "search.studies"]
    with caplog.at_level(logging.WARNING, logger="search.studies"), hb:
        wait_for(lambda: len(failures()) >= 1, 10, "a failed beat", poll_s=0.01)
    assert failures()[0] == "heartbeat of trial 7 failed: " + "a" * 199 + "b"
